"The demo's figures are presented as one run with its spread over seeds; its kernels start without jupyter's TCP warning."
import json
from pathlib import Path

import nbformat

import lmkkit.demo as demo

ROOT = Path(__file__).resolve().parents[1]

def test_demo_kernels_start_without_the_unencrypted_tcp_warning(tmp_path, monkeypatch, capfd):
    "ipykernel 7 warns once per kernel on TCP ('running over TCP without encryption'); the demo's kernels use IPC."
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('x = 0', metadata={'tags': ['parameters']}),
                nbformat.v4.new_code_cell('print("ran", x + 1)')]
    nb.metadata['kernelspec'] = {'name': 'python3', 'language': 'python', 'display_name': 'python3'}
    nbformat.write(nb, tmp_path/'k.ipynb')
    monkeypatch.setattr(demo, 'kernel_notebook', lambda name: tmp_path/'k.ipynb')
    out = demo.run_kernel('train', tmp_path/'out.ipynb', {'x': 41}, echo=True)
    printed = capfd.readouterr()
    assert 'ran 42' in printed.out
    assert 'without encryption' not in printed.out + printed.err, printed.err
    assert nbformat.read(out, as_version=4).cells[-1].outputs[0]['text'] == 'ran 42\n'

def test_committed_record_carries_a_spread_over_seeds_and_the_readme_says_so():
    record = json.loads((ROOT/'nbs'/'demo_record.json').read_text())
    spread = record['spread']
    assert len({r['seed'] for r in spread['runs']}) >= 3
    for m in ('gap', 'map@100'):
        assert spread[m]['min'] <= spread[m]['mean'] <= spread[m]['max']
    text = demo.record_markdown(record)
    assert "one run's digits, not the kit's score" in text and 'ended at a GAP of' in text
    assert text in (ROOT/'README.md').read_text()
