"""JupyterLab from the project's environment serves the notebooks (what `make lab` opens).

Starts `jupyter lab` on a free port of 127.0.0.1 with a random token, waits until it answers, fetches the
/lab page and one notebook through the contents API, and always stops the server.
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    "A TCP port of 127.0.0.1 that is free now."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def get(url: str, token: str) -> tuple[int, bytes]:
    "(status, body) of a GET with the server's token."
    req = urllib.request.Request(url, headers={'Authorization': f'token {token}'})
    try:
        with urllib.request.urlopen(req, timeout=10) as r: return r.status, r.read()
    except urllib.error.HTTPError as e: return e.code, e.read()


def test_jupyter_lab_serves_the_notebooks():
    port, token = free_port(), secrets.token_hex(16)
    jupyter = Path(sys.executable).parent/'jupyter'
    assert jupyter.exists(), f'{jupyter} is missing: jupyterlab belongs to the dev requirements (pip install -e ".[dev]")'
    home = tempfile.mkdtemp(prefix='lmkkit-lab-')  # runtime files and settings kept out of the user's home
    env = {**os.environ, 'JUPYTER_RUNTIME_DIR': home, 'JUPYTER_CONFIG_DIR': home, 'JUPYTERLAB_WORKSPACES_DIR': home}
    log = open(Path(home)/'lab.log', 'w+')
    proc = subprocess.Popen([str(jupyter), 'lab', '--no-browser', '--ip', '127.0.0.1', f'--port={port}',
                             '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={ROOT}',
                             *(['--allow-root'] if os.geteuid() == 0 else [])],  # CI runs as root
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f'http://127.0.0.1:{port}'
    try:
        t0 = time.monotonic()
        while True:
            assert proc.poll() is None, f'jupyter lab exited ({proc.returncode}):\n' + Path(log.name).read_text()[-3000:]
            try:
                if get(f'{base}/api/status', token)[0] == 200: break
            except OSError: pass
            assert time.monotonic() - t0 < 60, 'jupyter lab did not answer within 60 s:\n' + Path(log.name).read_text()[-3000:]
            time.sleep(0.25)
        status, body = get(f'{base}/lab', token)
        assert status == 200 and b'JupyterLab' in body, (status, body[:500])
        assert get(f'{base}/api/contents/nbs/00_core.ipynb', 'wrong-token')[0] == 403  # the token is required
        status, body = get(f'{base}/api/contents/nbs/00_core.ipynb', token)
        assert status == 200, (status, body[:500])
        model = json.loads(body)
        assert model['type'] == 'notebook' and model['name'] == '00_core.ipynb'
        cells = model['content']['cells']
        assert cells and any('default_exp core' in ''.join(c['source']) for c in cells)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try: proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL); proc.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)
