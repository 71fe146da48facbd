"""Submission and solution files end to end: round trips, every malformed-file error, scoring against a solution."""
import math
import random

import pytest

from lmkkit.metrics import (SolutionError, SubmissionError, evaluate_files, format_evaluation, gap, map_at_k,
                            read_solution, read_submission, validate_submission, write_recognition_submission,
                            write_retrieval_submission)


def _write(path, text):
    path.write_text(text)
    return path


# ---- round trips -------------------------------------------------------------------------------------------

def test_recognition_round_trip_scores_like_memory(tmp_path):
    rng = random.Random(1)
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(500)]
    solution = {q: ([rng.randrange(20)] if i % 4 else []) for i, q in enumerate(ids)}
    preds = {q: (rng.randrange(20), rng.random() ** 3) for q in ids if rng.random() < .9}
    path = write_recognition_submission(tmp_path / 'sub.csv', preds, ids)
    track, back = read_submission(path)
    assert track == 'recognition'
    assert back == preds  # repr() round-trips every float exactly
    assert gap(back, solution) == gap(preds, solution)
    assert [line.split(',')[0] for line in path.read_text().splitlines()[1:]] == ids
    assert validate_submission(path, reversed(ids)) == (track, back)


def test_retrieval_round_trip_keeps_order_and_duplicates(tmp_path):
    ids = ['q0', 'q1', 'q2']
    preds = {'q0': ['b', 'a', 'b'], 'q2': [f'i{i:03d}' for i in range(120)]}
    path = write_retrieval_submission(tmp_path / 'sub.csv', preds, ids)
    assert read_submission(path) == ('retrieval', {'q0': ['b', 'a', 'b'], 'q2': preds['q2'][:100]})
    assert path.read_text().splitlines()[:3] == ['id,images', 'q0,b a b', 'q1,']


def test_writers_refuse_what_would_make_a_bad_file(tmp_path):
    target = tmp_path / 'sub.csv'
    with pytest.raises(ValueError, match="'x'.*not in `ids`"): write_retrieval_submission(target, {'x': ['a']}, ['q'])
    with pytest.raises(ValueError, match="listed more than once"): write_retrieval_submission(target, {}, ['q', 'q'])
    with pytest.raises(ValueError, match="must be finite"): write_recognition_submission(target, {'q': (1, math.nan)}, ['q'])
    assert not target.exists() and list(tmp_path.iterdir()) == []  # atomic: no partial or temporary file left


def test_writer_replaces_an_existing_file_atomically(tmp_path):
    target = write_recognition_submission(tmp_path / 'sub.csv', {'q': (1, .5)}, ['q'])
    with pytest.raises(ValueError): write_recognition_submission(target, {'q': ('x', .5)}, ['q'])
    assert target.read_text() == 'id,landmarks\nq,1 0.5\n'


# ---- every malformed submission ------------------------------------------------------------------------------

BAD = [
    ('', None, "line 1: empty file"),
    ('id,landmark\nq0,1 0.5\n', None, "line 1: bad header 'id,landmark'; expected 'id,landmarks' or 'id,images'"),
    ('id,images,extra\nq0,a,b\n', None, "line 1: bad header"),
    ('id,landmarks\nq0,1 0.5\nq1,\nq0,2 0.5\n', None, "line 4: duplicate id 'q0' (first on line 2)"),
    ('id,landmarks\nq0,1 0.5\n', ['q0', 'q1', 'q2'], "2 test ids have no row, e.g. 'q1'"),
    ('id,landmarks\nq0,1 0.5\nzz,\n', ['q0'], "line 3: id 'zz' is not a test id (1 unknown ids in all)"),
    ('id,landmarks\nq0,1 0.5 7\n', None, "line 2: malformed cell '1 0.5 7'"),
    ('id,landmarks\nq0,0.5\n', None, "line 2: malformed cell '0.5'"),
    ('id,landmarks\nq0\n', None, "line 2: expected 2 columns, got 1"),
    ('id,landmarks\n,1 0.5\n', None, "line 2: empty id"),
    ('id,landmarks\nq0,1 nan\n', None, "line 2: confidence 'nan' is not finite"),
    ('id,landmarks\nq0,1 inf\n', None, "line 2: confidence 'inf' is not finite"),
    ('id,landmarks\nq0,1 -Infinity\n', None, "line 2: confidence '-Infinity' is not finite"),
    ('id,landmarks\nq0,1 sure\n', None, "line 2: confidence 'sure' is not a number"),
    ('id,landmarks\nq0,12a 0.5\n', None, "line 2: landmark id '12a' is not an integer"),
    ('id,landmarks\nq0,3.0 0.5\n', None, "line 2: landmark id '3.0' is not an integer"),
    ('id,images\nq0,' + ' '.join(f'i{i}' for i in range(101)) + '\n', None, "line 2: 101 index ids; at most 100"),
]


@pytest.mark.parametrize('text, ids, message', BAD)
def test_malformed_submission_names_file_line_and_fault(tmp_path, text, ids, message):
    path = _write(tmp_path / 'bad.csv', text)
    with pytest.raises(SubmissionError) as err: validate_submission(path, ids)
    assert str(err.value).startswith(str(path)) and message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_binary_file_is_a_submission_error(tmp_path):
    path = tmp_path / 'bad.csv'
    path.write_bytes(b'id,landmarks\nq0,1 0.5\nq1,\xff\xfe 0.5\n')
    with pytest.raises(SubmissionError, match=r"bad.csv: not UTF-8 text"): read_submission(path)


def test_lenient_where_kaggle_is(tmp_path):
    "A BOM, CRLF line ends, quoted cells, blank lines and 100 ids are all fine."
    text = '\ufeffid,images\r\nq0,"a b"\r\n\r\nq1,' + ' '.join(f'i{i}' for i in range(100)) + '\r\n'
    track, preds = validate_submission(_write(tmp_path / 'ok.csv', text), ['q0', 'q1'])
    assert track == 'retrieval' and preds['q0'] == ['a', 'b'] and len(preds['q1']) == 100


# ---- solutions and evaluation ------------------------------------------------------------------------------

RECOGNITION_SOLUTION = """id,landmarks,Usage
p1,10,Public
p2,20,Public
p3,,Public
v1,30 31,Private
v2,40,Private
v3,,Private
v4,50,Private
x1,60,Ignored
x2,,Ignored
"""


def test_evaluate_recognition_public_private_ignored(tmp_path):
    sol = _write(tmp_path / 'recognition_solution.csv', RECOGNITION_SOLUTION)
    preds = {'p1': (10, .2), 'p2': (99, .9), 'p3': (1, .5),               # Public: wrong, wrong, right
             'v1': (31, .8), 'v2': (40, .6), 'v3': (7, .7),               # Private: right, right, wrong(non-landmark)
             'x1': (5, 1.), 'x2': (5, .95)}                               # Ignored: dropped whatever they say
    sub = write_recognition_submission(tmp_path / 'sub.csv', preds, ['p1', 'p2', 'p3', 'v1', 'v2', 'v3', 'v4', 'x1', 'x2'])
    res = evaluate_files(sub, sol)
    # Public, by confidence: p2 (.9, wrong), p3 (.5, non-landmark), p1 (.2, right) -> 1/3 over M = 2.
    assert res['public'] == pytest.approx((1 / 3) / 2, abs=1e-15)
    # Private: v1 (.8, right) 1/1, v3 (.7, non-landmark), v2 (.6, right) 2/3; v4 unpredicted; M = 3.
    assert res['private'] == pytest.approx((1 + 2 / 3) / 3, abs=1e-15)
    # All: p2 .9 x, v1 .8 (1/2), v3 .7 x, v2 .6 (2/4), p3 .5 x, p1 .2 (3/6); M = 5.
    assert res['all'] == pytest.approx((1 / 2 + 2 / 4 + 3 / 6) / 5, abs=1e-15)
    assert (res['track'], res['metric'], res['rows']) == ('recognition', 'GAP', {'Public': 3, 'Private': 4, 'Ignored': 2})
    assert format_evaluation(res).splitlines()[-1] == 'GAP 0.3000'


def test_evaluate_retrieval_public_private_ignored(tmp_path):
    sol = _write(tmp_path / 'retrieval_solution.csv',
                 'id,images,Usage\na,i1 i2,Public\nb,i3,Public\nc,,Public\nd,i4 i5 i6,Private\ne,i7,Ignored\n')
    preds = {'a': ['i2', 'i9', 'i2', 'i1'],         # hits at 1 and 4: (1 + 2/4) / 2
             'c': ['i1'],                           # nothing relevant: not scored
             'd': [f'z{i}' for i in range(99)] + ['i5', 'i4'],  # i5 at rank 100 (1/100), i4 (rank 101) is cut: / 3
             'e': ['i7']}
    sub = write_retrieval_submission(tmp_path / 'sub.csv', preds, list('abcde'))
    res = evaluate_files(sub, sol)
    assert res['public'] == pytest.approx(((1 + 2 / 4) / 2 + 0) / 2, abs=1e-15)
    assert res['private'] == pytest.approx((1 / 100) / 3, abs=1e-15)
    assert res['all'] == pytest.approx(((1 + 2 / 4) / 2 + 0 + (1 / 100) / 3) / 3, abs=1e-15)
    assert format_evaluation(res).splitlines()[-1] == f"mAP@100 {res['all']:.4f}" == 'mAP@100 0.2511'


def test_perfect_submissions_score_one(tmp_path):
    _, rec = read_solution(_write(tmp_path / 'rs.csv', RECOGNITION_SOLUTION))
    truth = {q: t for g in rec.values() for q, t in g.items()}
    preds = {q: (t[-1], 1.0) for q, t in truth.items() if t}  # non-landmarks left empty
    res = evaluate_files(write_recognition_submission(tmp_path / 's.csv', preds, truth), tmp_path / 'rs.csv')
    assert (res['public'], res['private'], res['all']) == (1.0, 1.0, 1.0)
    assert format_evaluation(res).splitlines()[-1] == 'GAP 1.0000'
    sol = _write(tmp_path / 'ts.csv', 'id,images,Usage\na,i1 i2,Public\nb,i3,Private\n')
    sub = write_retrieval_submission(tmp_path / 't.csv', {'a': ['i2', 'i1'], 'b': ['i3']}, 'ab')
    assert evaluate_files(sub, sol)['all'] == 1.0


def test_evaluate_rejects_bad_submissions_by_row(tmp_path):
    sol = _write(tmp_path / 'rs.csv', RECOGNITION_SOLUTION)
    rows = ''.join(f'{q},\n' for q in ['p1', 'p2', 'p3', 'v1', 'v2', 'v3', 'v4', 'x1'])
    with pytest.raises(SubmissionError, match=r"sub.csv, line 5: landmark id 'x' is not an integer"):
        evaluate_files(_write(tmp_path / 'sub.csv', 'id,landmarks\np1,1 .5\np2,\np3,\nv1,x .5\n'), sol)
    with pytest.raises(SubmissionError, match="1 test ids have no row, e.g. 'x2'"):
        evaluate_files(_write(tmp_path / 'sub.csv', 'id,landmarks\n' + rows), sol)
    with pytest.raises(SubmissionError, match="retrieval submission .* recognition solution"):
        evaluate_files(_write(tmp_path / 'sub.csv', 'id,images\n' + rows + 'x2,\n'), sol)


@pytest.mark.parametrize('text, message', [
    ('id,landmarks\nq,1,Public\n', "line 1: bad header 'id,landmarks'; expected 'id,landmarks,Usage' or 'id,images,Usage'"),
    ('id,landmarks,Usage\nq,1,public\n', "line 2: Usage 'public' is not one of Public, Private, Ignored"),
    ('id,landmarks,Usage\nq,1,Public\nq,2,Private\n', "line 3: duplicate id 'q' (first on line 2)"),
    ('id,landmarks,Usage\nq,1 b,Public\n', "line 2: landmark ids '1 b' are not integers"),
    ('id,images,Usage\nq,a\n', "line 2: expected 3 columns, got 2"),
])
def test_malformed_solution(tmp_path, text, message):
    path = _write(tmp_path / 'sol.csv', text)
    with pytest.raises(SolutionError) as err: read_solution(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_solution_without_scored_rows(tmp_path):
    sol = _write(tmp_path / 'sol.csv', 'id,images,Usage\na,,Public\nb,i1,Ignored\n')
    sub = write_retrieval_submission(tmp_path / 'sub.csv', {}, 'ab')
    with pytest.raises(SolutionError, match="no Public or Private row can be scored"): evaluate_files(sub, sol)
    with pytest.raises(ValueError, match="no query with relevant images"): map_at_k({}, {'a': []})
