"""The documentation site in a real browser, and the README kept in step with nbs/index.ipynb.

The site is built from nbs/ into a temporary folder, served on 127.0.0.1 by http.server, and every page is
opened in headless Chromium driven through the DevTools protocol (websocket-client; no driver, no browser
download). Each page must load without console errors or failed requests, carry its title and the sidebar,
typeset its formulas with the local MathJax (the pinned PyPI package django-static-mathjax), and link only to files and anchors that exist.

Chromium comes from Debian: `make system-deps` (run by `make test`) installs it as root. Without it the browser tests are skipped, except
under CI (env CI set), where a missing browser is a failure. LMKKIT_SCREENSHOT_DIR, if set, receives the
screenshots too.
"""
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

from lmkkit.docs import MATHJAX_HINT, build_site, list_notebooks, page_name, readme_is_current, title_cell

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
IN_CI = bool(os.environ.get('CI'))
CHROME_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                '--disable-background-networking', '--disable-component-update', '--disable-sync',
                '--disable-extensions', '--hide-scrollbars', '--remote-allow-origins=*']


def chromium_path() -> str | None:
    "The Chromium binary: $LMKKIT_CHROMIUM or the first of chromium, chromium-browser, google-chrome on PATH."
    if os.environ.get('LMKKIT_CHROMIUM'): return os.environ['LMKKIT_CHROMIUM']
    return next((p for p in map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome')) if p), None)


def need(ok: bool, what: str):
    "Skip with `what` unless under CI, where a missing tool fails the test."
    if ok: return
    if IN_CI: pytest.fail(f"{what} (required in CI: see .ci/run)")
    pytest.skip(what)


# ---------------------------------------------------------------- a minimal DevTools protocol client
class Browser:
    "Headless Chromium with one page target, driven over the DevTools protocol."
    def __init__(self, binary: str, timeout: float = 30):
        import websocket
        self.profile = tempfile.mkdtemp(prefix='lmkkit-chromium-')
        self.proc = subprocess.Popen([binary, *CHROME_FLAGS, f'--user-data-dir={self.profile}', '--remote-debugging-port=0',
                                      'about:blank'], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file, t0 = Path(self.profile)/'DevToolsActivePort', time.monotonic()
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited ({self.proc.returncode}): {self.proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() - t0 > timeout: raise TimeoutError('chromium did not open its DevTools port')
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list', timeout=timeout))
        page = next(t for t in targets if t['type'] == 'page')
        self.ws = websocket.create_connection(page['webSocketDebuggerUrl'], timeout=timeout, suppress_origin=True)
        self.next_id, self.events = 0, []
        for domain in ('Page', 'Runtime', 'Log', 'Network'): self.call(f'{domain}.enable')
        self.call('Emulation.setDeviceMetricsOverride', width=1280, height=900, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params):
        "Send a command and return its result; events that arrive meanwhile are kept in `events`."
        self.next_id += 1
        self.ws.send(json.dumps({'id': self.next_id, 'method': method, 'params': params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get('id') == self.next_id:
                if 'error' in msg: raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get('result', {})
            if 'method' in msg: self.events.append(msg)

    def js(self, expr: str):
        "The value of a JavaScript expression in the page."
        r = self.call('Runtime.evaluate', expression=expr, returnByValue=True, awaitPromise=True)
        if 'exceptionDetails' in r: raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r['result'].get('value')

    def open(self, url: str, timeout: float = 30) -> list[dict]:
        "Load `url`, wait for the load event and for MathJax if the page uses it; the events of this load."
        self.events = []
        self.call('Page.navigate', url=url)
        t0 = time.monotonic()
        while not any(e['method'] == 'Page.loadEventFired' for e in self.events):
            if time.monotonic() - t0 > timeout: raise TimeoutError(f'{url} did not load')
            msg = json.loads(self.ws.recv())
            if 'method' in msg: self.events.append(msg)
        while self.js("!!window.MathJax && document.documentElement.getAttribute('data-math') !== 'done'"):
            if time.monotonic() - t0 > timeout: raise TimeoutError(f'MathJax did not finish on {url}')
            time.sleep(0.05)
        self.js('1')  # drain events that arrived with MathJax's last requests
        return self.events

    def screenshot(self, path: Path) -> Path:
        "A PNG of the whole page."
        import base64
        r = self.call('Page.captureScreenshot', format='png', captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(r['data']))
        return path

    def close(self):
        try: self.ws.close()
        finally:
            self.proc.terminate()
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)


def problems_in(events: list[dict]) -> list[str]:
    "Console errors, uncaught exceptions and failed requests among DevTools events."
    out = []
    for e in events:
        m, p = e['method'], e.get('params', {})
        if m == 'Runtime.consoleAPICalled' and p['type'] in ('error', 'assert'):
            out.append('console: ' + ' '.join(str(a.get('value', a.get('description'))) for a in p['args']))
        elif m == 'Runtime.exceptionThrown':
            out.append('exception: ' + p['exceptionDetails'].get('exception', {}).get('description', p['exceptionDetails']['text']))
        elif m == 'Log.entryAdded' and p['entry']['level'] == 'error':
            out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif m == 'Network.loadingFailed' and not p.get('canceled'):
            out.append(f"request failed: {p['errorText']} ({p.get('type')})")
        elif m == 'Network.responseReceived' and p['response']['status'] >= 400:
            out.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
    return out


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The site built from nbs/ (stored outputs, no execution), with its build summary."
    out = tmp_path_factory.mktemp('docs')/'_site'
    notebooks = list_notebooks(NBS)  # other notebooks may appear while the site is built
    return dict(build_site(NBS, out, verbose=False), notebooks=notebooks)


@pytest.fixture(scope='module')
def server(site):
    "Base URL of the site served by http.server on a free port of 127.0.0.1."
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), partial(Quiet, directory=str(site['out'])))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try: yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    finally:
        httpd.shutdown(); httpd.server_close(); thread.join(10)


@pytest.fixture(scope='module')
def visits(site, server):
    "Every page opened in headless Chromium: {page: what was seen}; screenshots of the index and one page with formulas."
    binary = chromium_path()
    need(binary is not None, 'chromium is not installed (as root: make system-deps; or apt-get install -y chromium)')
    shots = [Path(tempfile.mkdtemp(prefix='lmkkit-shots-'))]
    if os.environ.get('LMKKIT_SCREENSHOT_DIR'): shots.append(Path(os.environ['LMKKIT_SCREENSHOT_DIR']))
    browser, seen, shot_math = Browser(binary), {}, False
    try:
        for name in site['pages']:
            events = browser.open(server + name)
            seen[name] = dict(problems=problems_in(events), **browser.js("""(() => ({
                title: document.title,
                h1: (document.querySelector('h1.title') || {}).textContent || '',
                sidebar: [...document.querySelectorAll('#sidebar ul.pages > li > a')].map(a => a.getAttribute('href')),
                current: [...document.querySelectorAll('#sidebar li.current > a')].map(a => a.getAttribute('href')),
                links: [...document.querySelectorAll('a[href]')].map(a => a.href),
                srcs: [...document.querySelectorAll('[src]')].map(e => e.src)
                      .concat([...document.querySelectorAll('link[href]')].map(l => l.href)),
                ids: [...document.querySelectorAll('[id]')].map(e => e.id),
                math: document.querySelectorAll('mjx-container[jax="CHTML"]').length,
                math_errors: document.querySelectorAll('mjx-merror, merror, [data-mjx-error]').length,
                prose: Math.max(0, ...[...document.querySelectorAll('.text_cell_render > p')].map(p => p.getBoundingClientRect().width)),
            }))()"""))
            if name == 'index.html' or (not shot_math and seen[name]['math']):
                shot_math |= name != 'index.html'
                first = browser.screenshot(shots[0]/name.replace('.html', '.png'))
                for d in shots[1:]: d.mkdir(parents=True, exist_ok=True); shutil.copyfile(first, d/first.name)
        seen['_screenshots'] = shots[0]
    finally:
        browser.close()
    return seen


# ---------------------------------------------------------------- tests
def test_every_notebook_has_a_page(site):
    names = [p.name for p in site['notebooks']]
    assert names and all(not n.startswith('_') for n in names)
    assert set(site['pages']) >= {page_name(p, NBS) for p in site['notebooks']} | {'index.html'}
    assert site['pages'][0] == 'index.html'
    assert (site['out']/'assets/site.css').exists() and (site['out']/'assets/pygments.css').exists()
    assert site['failed'] == []


def test_pages_load_without_errors(visits, site):
    bad = {name: v['problems'] for name, v in visits.items() if name in site['pages'] and v['problems']}
    assert bad == {}


def test_titles_and_sidebar(visits, site):
    titles = {}
    for src in site['notebooks']:
        title = title_cell(__import__('nbformat').read(src, as_version=4))[0]
        if title: titles[src.stem] = title
    for name in site['pages']:
        v = visits[name]
        assert v['h1'].strip() and v['title'].startswith(v['h1'].strip()), (name, v['title'], v['h1'])
        assert v['sidebar'] == site['pages'], name
        assert v['current'] == [name], name
        assert v['prose'] <= 800, (name, v['prose'])  # about 80 characters a line, not the whole screen
    assert visits['core.html']['h1'] == titles['00_core']


def test_no_broken_internal_links_or_images(visits, site, server):
    ids = {name: set(v['ids']) for name, v in visits.items() if name in site['pages']}
    broken, checked = [], set()
    for name in site['pages']:
        for url in visits[name]['links'] + visits[name]['srcs']:
            if not url.startswith(server): continue
            path, frag = urldefrag(url)
            target = unquote(urlparse(path).path).lstrip('/') or 'index.html'
            if target in ids:
                if frag and unquote(frag) not in ids[target]: broken.append(f'{name}: {url} (no such anchor)')
                continue
            if path in checked: continue
            checked.add(path)
            try: urllib.request.urlopen(path, timeout=10).read()
            except Exception as e: broken.append(f'{name}: {url} ({e})')
    assert broken == []
    assert any(u.startswith(server) for u in visits['index.html']['links'])


def test_formulas_are_typeset(visits, site):
    need(site['mathjax'] is not None, f'no local MathJax: {MATHJAX_HINT}')
    assert sum(v['math'] for n, v in visits.items() if n in site['pages']) > 0
    assert {n: v['math_errors'] for n, v in visits.items() if n in site['pages'] and v['math_errors']} == {}


def test_screenshots(visits):
    shot = visits['_screenshots']/'index.png'
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_readme_is_current():
    if not (NBS/'index.ipynb').exists(): pytest.skip('no nbs/index.ipynb yet')
    assert readme_is_current(NBS, ROOT/'README.md'), 'README.md is out of date: run `lmkkit docs --readme` (or make docs)'


def test_build_site_executes_notebooks(tmp_path):
    "With execute=True the page shows results, figures included, computed at build time."
    import nbformat
    nbs = tmp_path/'nbs'; nbs.mkdir()
    cells = [nbformat.v4.new_markdown_cell('# Plot\n> A figure made when the site is built.'),
             nbformat.v4.new_code_cell('import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0]);'),
             nbformat.v4.new_code_cell('print(6 * 7)'),
             nbformat.v4.new_code_cell('#| slow\nraise RuntimeError("slow cells are skipped")')]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), nbs/'00_plot.ipynb')
    res = build_site(nbs, tmp_path/'_site', execute=True, verbose=False)
    page = (tmp_path/'_site/plot.html').read_text()
    assert res['failed'] == []
    assert '<img' in page and 'data:image/png;base64' in page and '42' in page
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1/0')]), nbs/'01_bad.ipynb')
    res = build_site(nbs, tmp_path/'_site', execute=True, verbose=False)
    assert res['failed'] == ['01_bad.ipynb'] and 'ZeroDivisionError' in res['problems']['bad.html'][0]
