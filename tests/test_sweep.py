"lmkkit sweep end to end: a 2x2 grid over a tiny notebook through papermill, resuming, and bad sweep files."
import json
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from lmkkit import sweep as ls

ROOT = Path(__file__).resolve().parents[1]

BODY = """import json, pathlib
if a == 2 and b == 'yy':
    raise RuntimeError('unlucky combination')
pathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'score': a * len(b), 'other': 1.0}))"""


@pytest.fixture()
def project(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("a = 1  # a number\nb = 'x'  # a word\nout_dir = '.'  # where results go",
                                  metadata={'tags': ['parameters']}),
        nbformat.v4.new_code_cell(BODY)])
    nbformat.write(nb, str(tmp_path / 'exp.ipynb'))
    (tmp_path / 'grid.yaml').write_text(
        "notebook: exp.ipynb\ngrid:\n  a: [1, 2]\n  b: [x, yy]\nmetrics: [score]\nout: results\n")
    return tmp_path


def _mtimes(out):
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / 'runs').glob('*/notebook.ipynb')}


def test_sweep_grid_resume_and_table(project, capsys):
    assert ls.main([str(project / 'grid.yaml'), '--quiet']) == 0
    out = project / 'results'
    table = pd.read_csv(out / 'results.csv')
    assert list(table.columns) == ['run', 'a', 'b', 'status', 'error', 'seconds', 'score']
    assert list(table.run) == ['a=1_b=x', 'a=1_b=yy', 'a=2_b=x', 'a=2_b=yy']
    assert list(table.status) == ['ok', 'ok', 'ok', 'failed']
    assert list(table.score[:3]) == [1, 2, 2] and pd.isna(table.score[3])
    assert table.error[3] == 'RuntimeError: unlucky combination'
    assert table.error[:3].isna().all()
    assert '| a=2_b=yy | 2 | yy | failed | RuntimeError: unlucky combination |' in (out / 'results.md').read_text()
    assert (out / 'results.png').read_bytes()[:4] == b'\x89PNG'
    assert json.loads((out / 'runs' / 'a=1_b=yy' / 'run.json').read_text())['params'] == {'a': 1, 'b': 'yy'}
    first = _mtimes(out)
    assert len(first) == 4

    assert ls.main([str(project / 'grid.yaml'), '--quiet']) == 0
    assert _mtimes(out) == first  # nothing re-ran, the failed run included
    pd.testing.assert_frame_equal(pd.read_csv(out / 'results.csv'), table)

    (project / 'grid.yaml').write_text(
        "notebook: exp.ipynb\ngrid:\n  a: [1, 2, 3]\n  b: [x, yy]\nmetrics: [score]\nout: results\n")
    grown = ls.run_sweep(project / 'grid.yaml', verbose=False)
    now = _mtimes(out)
    assert {k: now[k] for k in first} == first and sorted(set(now) - set(first)) == ['a=3_b=x', 'a=3_b=yy']
    assert list(grown.score.iloc[4:]) == [3, 6]


@pytest.mark.parametrize('text,expected', [
    ("notebook: exp.ipynb\ngrid: {a: [1]}\nouts: x\n", "unknown key(s) 'outs'"),
    ("notebook: exp.ipynb\ngrid: {a: []}\n", "grid parameter 'a' needs a non-empty list"),
    ("notebook: exp.ipynb\ngrid: {}\n", 'nothing to run'),
    ("notebook: missing.ipynb\ngrid: {a: [1]}\n", 'notebook missing.ipynb not found'),
    ("notebook: exp.ipynb\ngrid: {lr: [0.1]}\n", "parameter(s) 'lr' not in exp.ipynb's parameters cell (it has: a, b, out_dir)"),
    ("notebook: exp.ipynb\nparameters: {c: 1}\ngrid: {a: [1]}\n", "parameter(s) 'c' not in exp.ipynb"),
    ("- just a list\n", 'must be a YAML mapping'),
])
def test_bad_sweep_file(project, capsys, text, expected):
    (project / 'bad.yaml').write_text(text)
    with pytest.raises(ls.ConfigError, match=re.escape(expected)):
        ls.main([str(project / 'bad.yaml')])
    assert not (project / 'bad').exists()  # failed before any run
