"The `lmkkit` console script end to end: synth writes a data set, evaluate scores submissions on it."
import csv
import subprocess
import sys
from pathlib import Path

import pytest

from lmkkit.metrics import gap, map_at_k, read_solution, read_submission


def lmkkit(*args, check=True):
    "Run the installed console script; returns the completed process."
    exe = Path(sys.executable).parent / 'lmkkit'
    res = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check: assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope='module')
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('cli') / 'synth'
    lmkkit('synth', out, '--seed', 3, '--landmarks', 8, '--train-per-landmark', 3, '--image-size', 64)
    return out


def _rows(path: Path) -> list[dict]:
    with open(path, newline='') as f: return list(csv.DictReader(f))


def _perfect_recognition(synth: Path, out: Path) -> Path:
    "A submission that predicts every landmark query's true label with confidence 1 and nothing else."
    with open(out, 'w', newline='') as f:
        w = csv.writer(f); w.writerow(['id', 'landmarks'])
        for r in _rows(synth / 'recognition_solution.csv'):
            w.writerow([r['id'], f"{r['landmarks'].split()[0]} 1.0" if r['landmarks'] else ''])
    return out


def test_help_lists_every_command():
    text = lmkkit('--help').stdout
    for name in ('synth', 'evaluate', 'train', 'docs', 'kernels', 'sweep'): assert name in text


def test_synth_writes_the_gldv2_layout(synth):
    for name in ('train.csv', 'recognition_solution.csv', 'retrieval_solution.csv',
                 'recognition_sample_submission.csv', 'retrieval_sample_submission.csv'):
        assert (synth / name).is_file(), name
    first = _rows(synth / 'train.csv')[0]['id']
    assert (synth / 'train' / first[0] / first[1] / first[2] / f'{first}.jpg').is_file()


def test_synth_refuses_to_overwrite_without_the_flag(synth):
    res = lmkkit('synth', synth, '--landmarks', 8, check=False)
    assert res.returncode != 0 and 'overwrite' in res.stderr.lower()


def test_perfect_recognition_scores_one(synth, tmp_path):
    res = lmkkit('evaluate', _perfect_recognition(synth, tmp_path / 'sub.csv'), synth / 'recognition_solution.csv')
    assert res.stdout.strip().splitlines()[-1] == 'GAP 1.0000'


@pytest.mark.parametrize('track,metric', [('recognition', 'GAP'), ('retrieval', 'mAP@100')])
def test_sample_submission_scores_what_the_metric_says(synth, track, metric):
    sub, sol = synth / f'{track}_sample_submission.csv', synth / f'{track}_solution.csv'
    _, predictions = read_submission(sub)
    _, by_usage = read_solution(sol)
    truth = {q: t for usage in ('Public', 'Private') for q, t in by_usage.get(usage, {}).items()}
    score = gap if track == 'recognition' else map_at_k
    expected = score({q: p for q, p in predictions.items() if q in truth and p}, truth)
    last = lmkkit('evaluate', sub, sol).stdout.strip().splitlines()[-1]
    assert last == f'{metric} {expected:.4f}'


def test_malformed_submission_names_the_row(synth, tmp_path):
    rows = (synth / 'recognition_sample_submission.csv').read_text().splitlines()
    rows[3] = rows[3].split(',')[0] + ',notanumber 0.5'
    bad = tmp_path / 'bad.csv'; bad.write_text('\n'.join(rows) + '\n')
    res = lmkkit('evaluate', bad, synth / 'recognition_solution.csv', check=False)
    assert res.returncode == 2 and 'line 4' in res.stderr, res.stderr


def test_malformed_solution_is_an_error_not_a_traceback(synth, tmp_path):
    bad = tmp_path / 'solution.csv'
    bad.write_text('id,landmarks,Usage\nabc,1,Sometimes\n')
    res = lmkkit('evaluate', synth / 'recognition_sample_submission.csv', bad, check=False)
    assert res.returncode == 2 and 'Traceback' not in res.stderr and 'Sometimes' in res.stderr, res.stderr
