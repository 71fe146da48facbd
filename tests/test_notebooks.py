"Every notebook runs top to bottom under nbdev's test runner (slow and GPU cells skipped)."
import os
import subprocess
import sys
from pathlib import Path

import pytest

NBS = sorted(p for p in (Path(__file__).resolve().parents[1] / 'nbs').glob('*.ipynb') if not p.name.startswith('_'))


@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_notebook_runs(nb):
    nbdev_test = Path(sys.executable).parent / 'nbdev_test'
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'NO_ALBUMENTATIONS_UPDATE': '1'}
    res = subprocess.run([str(nbdev_test), '--path', str(nb)], capture_output=True, text=True,
                         cwd=nb.parent.parent, env=env, timeout=600)
    assert res.returncode == 0, f'{nb.name} failed under nbdev_test:\n{res.stderr[-6000:]}'
