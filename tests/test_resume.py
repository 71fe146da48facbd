"A truncated last.pt: `lmkkit train` stops with one line naming it, or resumes from the earlier run it came from."
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

from lmkkit.core import make_config
from lmkkit.train import PRESETS, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONPATH=str(ROOT))
TINY = dict(stages=((32, 1),), batch_size=8, embedding_size=16, num_workers=0, log_every_steps=1,
            checkpoint_every_steps=100, val_max_index=64, val_every_epochs=0)
LMKKIT = [sys.executable, '-c', 'import sys; from lmkkit.cli import main; sys.exit(main(sys.argv[1:]))']

def tiny(**kw) -> TrainConfig: return make_config(TrainConfig, base=PRESETS['demo'], **{**TINY, **kw})

@pytest.fixture(scope='module')
def earlier(gld, tmp_path_factory):
    "A finished tiny run: the previous good checkpoint."
    out = tmp_path_factory.mktemp('earlier')
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try: res = train(gld, out, tiny(), device='cpu', verbose=False)
    finally: torch.set_num_threads(n)
    assert res.finished
    return out

def cut_copy(src: Path, dst: Path) -> Path:
    "What an interrupted plain copy leaves: the first half of the file."
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes()[:src.stat().st_size // 2])
    return dst

def test_truncated_last_pt_stops_train_with_one_line(gld, earlier, tmp_path):
    out = tmp_path/'run'
    cut_copy(earlier/'last.pt', out/'last.pt')
    before = (out/'last.pt').read_bytes()
    args = [a for k, v in TINY.items() for a in (f"--{k.replace('_', '-')}", repr(v))]
    res = subprocess.run(LMKKIT + ['train', str(gld), str(out), '--preset', 'demo', '--quiet', *args],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in res.stderr, res.stderr
    assert f"cannot resume: {out/'last.pt'}: unreadable, truncated or corrupt" in lines[0], lines[0]
    assert (out/'last.pt').read_bytes() == before  # left where it is, for the user to look at

def test_truncated_last_pt_falls_back_to_resume_from(gld, earlier, tmp_path, capsys):
    out = tmp_path/'run'
    cut_copy(earlier/'last.pt', out/'last.pt')
    res = train(gld, out, tiny(), device='cpu', resume_from=earlier)
    assert res.finished and res.step == res.total_steps  # the earlier run had finished: nothing left to do
    assert f"{out/'last.pt'}: unreadable" in capsys.readouterr().out
    assert (out/'last.pt').read_bytes() == (earlier/'last.pt').read_bytes()  # the good copy replaced the cut one
    assert (out/'metrics.csv').read_text() == (earlier/'metrics.csv').read_text()
    assert not [p.name for p in out.iterdir() if p.name.endswith('.tmp')]

def test_training_kernel_resumes_through_the_library_not_a_plain_copy():
    "The kernel hands resume_from to train(), whose copy is atomic and checked (it had `shutil.copy` of last.pt)."
    import json
    nb = json.loads((ROOT/'kaggle_kernels'/'lmkkit-train'/'lmkkit-train.ipynb').read_text())
    code = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'code')
    assert 'shutil.copy' not in code and 'resume_from=resume_from' in code
