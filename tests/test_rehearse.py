"""`lmkkit rehearse` end to end at tiny sizes: the kernel's own run on cached synthetic embeddings, its timeline, the projection."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmkkit.metrics import validate_submission
from lmkkit.rehearse import GLDV2_TEST, GLDV2_TRAIN, RunAssumptions, main, project_run, run_units
from test_verify import REAL

RUN_STEPS = ['empty_submission', 'public_check', 'read_train', 'load_model', 'embed_test', 'embed_nonlandmarks',
             'embed_train', 'knn', 'holdout', 'nonlandmark_penalty', 'verify_probe', 'verify', 'lgbm']


def test_rehearse_command(tmp_path, capsys):
    args = ['--train', '3k', '--test', '200', '--dim', '128', '--nonlandmarks', '100', '--max-holdout', '150',
            '--hours', '0.02', '--out', tmp_path]
    assert main([*map(str, args), *(['--images', str(REAL)] if REAL else [])]) == 0
    printed = capsys.readouterr().out
    steps = pd.read_csv(tmp_path / 'steps.csv')
    assert steps.step.tolist() == ['generate', *RUN_STEPS]
    by = steps.set_index('step')
    # every step that ran has its time and its own peak memory; the searches' work is Q·N·D multiply-adds
    ran = steps[steps.ran.astype(bool)]
    assert ran.actual_s.notna().all() and (ran.peak_mib > 0).all()
    assert by.loc['knn', 'work'] == 200 * 3000 * 128 and by.loc['read_train', 'work'] == 3000
    h = int(by.loc['knn', 'holdout_queries'])
    assert h == 150 + 50  # the held-out landmarks (max_holdout) and half the non-landmarks
    assert by.loc['holdout', 'work'] == h * 3000 * 128
    # the embeddings came from the cache: nothing was extracted
    assert by.loc['embed_train', 'note'] == '3000/3000 images'
    # a 72 s limit: the planner shortened verification to what fits, and every stage it ran was planned to end
    # inside the limit from where it started (a plan, not a wall-clock figure: a loaded machine runs late)
    assert by.loc['verify', 'ran'] and 0 < by.loc['verify', 'work'] <= (200 + h) * 10
    stages = by.loc[['nonlandmark_penalty', 'verify', 'lgbm']]
    stages = stages[stages.ran.astype(bool)]
    assert len(stages) and (stages.start_s + stages.planned_s).max() <= 72, stages[['start_s', 'planned_s']]
    # the run's submission is valid and scores on the synthetic solution
    run = tmp_path / 'run'
    validate_submission(run / 'submission.csv')
    assert by.gap.iloc[0] > 0.1  # a random submission: about 0.01
    assert not (tmp_path / 'data').exists() and not (tmp_path / 'cache').exists()  # removed unless --keep
    assert (tmp_path / 'projection.png').stat().st_size > 10_000
    assert 'projected full recognition kernel on T4 x2 (2 GPUs, 4 CPU cores)' in printed and 'peak RSS of the run' in printed


def _steps(**rows) -> pd.DataFrame:
    "A made-up rehearsal timeline: step -> (actual_s, work)."
    return pd.DataFrame([dict(step=s, actual_s=t, work=w, ran=True) for s, (t, w) in rows.items()])


def test_projection_by_hand():
    a = RunAssumptions(extract_rate=100.0, decode_rate_per_core=1000.0, nonlandmarks=10_000, holdout_landmarks=20_000)
    full = run_units(GLDV2_TRAIN, GLDV2_TEST, 25_000, 10_000, 512)
    steps = _steps(load_model=(3.0, np.nan), read_train=(2.0, 100_000), embed_train=(0.5, np.nan), knn=(10.0, 1e12),
                   lgbm=(100.0, 25_000), verify=(50.0, 1000))
    p = project_run(steps, a).set_index('step')
    assert p.loc['load_model', 'seconds'] == 3.0  # a fixed cost, as measured
    assert np.isclose(p.loc['read_train', 'seconds'], 2.0 / 100_000 * GLDV2_TRAIN)
    assert np.isclose(p.loc['embed_train', 'seconds'], GLDV2_TRAIN / 200.0)  # 100/s on each of T4 x2's GPUs
    assert np.isclose(p.loc['knn', 'seconds'], 2 * GLDV2_TEST * GLDV2_TRAIN * 512 / (0.5 * 8.1e12 * 2))  # the index split over both
    assert np.isclose(p.loc['lgbm', 'seconds'], 100.0)  # 25,000 held-out queries in both
    # verification gets what is left of 0.8 x 12 h: at 50 ms a pair split over 2 GPUs for 142,577 queries
    left = 0.8 * 12 * 3600 - p.seconds.drop('verify').sum()
    top = min(10, int(left / (0.025 * full['query'])))
    assert np.isclose(p.loc['verify', 'seconds'], top * 0.025 * full['query'])
    assert f'shortened to top {top} (time)' in p.loc['verify', 'basis']
    # 0.5 s a pair (0.25 on each GPU): one pair each for all queries does not fit, so the kernel verifies a share of them with all that is left
    slow = project_run(_steps(**{**dict(load_model=(3.0, np.nan), knn=(10.0, 1e12), lgbm=(100.0, 25_000)), 'verify': (50.0, 100)}), a)
    v = slow.set_index('step').loc['verify']
    assert np.isclose(slow.end_h.iloc[-1], 0.8 * 12) and f'of the queries (time)' in v.basis
    assert f"top 1 for about {v.seconds / (0.25 * full['query']):.0%}" in v.basis
    assert slow.step.tolist()[-2:] == ['lgbm', 'verify']  # in the order the rehearsal ran them
    cpu = project_run(steps, RunAssumptions(search_on='cpu')).set_index('step')
    assert np.isclose(cpu.loc['knn', 'seconds'], 10.0 / 1e12 * GLDV2_TEST * GLDV2_TRAIN * 512)  # scaled from the rehearsal


def test_projection_is_for_kaggles_machines_now():
    "T4 x2 by default (both GPUs extract, search and verify; 4 cores decode), L4 on request, the P100 gone; a 3-model ensemble."
    from lmkkit.core import ConfigError
    from lmkkit.rehearse import GPUS, extraction_rate
    assert sorted(GPUS) == ['L4', 'T4x2'] and RunAssumptions().gpu == 'T4x2'
    with pytest.raises(ConfigError, match='the P100 is gone'): RunAssumptions(gpu='P100')
    t4 = RunAssumptions()
    assert np.isclose(extraction_rate(t4)[0], 2 * 0.3 * 65e12 / 79e9) and t4.n_cores == 4 and t4.n_verify == 2
    assert extraction_rate(RunAssumptions(mfu=1.0))[1] == 'JPEG decoding'  # 4 cores x 125/s = 500/s bind first
    assert extraction_rate(RunAssumptions(mfu=1.0, decode='nvjpeg', nvjpeg_rate=400.0)) == (800.0, 'nvJPEG decoding')
    steps = _steps(load_model=(3.0, np.nan), embed_train=(0.5, np.nan), knn=(10.0, 1e12), lgbm=(100.0, 25_000),
                   verify=(50.0, 1000))
    three = project_run(steps, RunAssumptions(models=3)).set_index('step')
    assert np.isclose(three.loc['embed_train', 'seconds'], 3 * GLDV2_TRAIN / extraction_rate(t4)[0])
    assert three.end_h.iloc[-1] <= 0.8 * 12 and 'x 3 models' in three.loc['embed_train', 'basis']
    l4 = project_run(steps, RunAssumptions(gpu='L4')).set_index('step')
    assert np.isclose(l4.loc['knn', 'seconds'], 2 * GLDV2_TEST * GLDV2_TRAIN * 512 / (0.5 * 30.3e12))


@pytest.mark.parametrize('args, message', [
    (['--train', '0', '--test', '5'], "'0' is not a positive whole count"),
    (['--train', 'abc', '--test', '5'], "is not a positive whole count"),
    (['--train', '1000', '--test', '5', '--device', 'cuda'], "torch sees no GPU here; use --device cpu"),
    (['--train', '1000', '--test', '5', '--images', '/nonexistent'], "not a folder"),
    (['--train', '1000', '--test', '5', '--images', '/tmp'], "needs a subfolder of JPEGs per landmark"),
    (['--train', '1000', '--test', '5', '--device', 'gpu'], "parameter 'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (['--train', '1000', '--test', '5', '--extract-rate', '-3'], "'-3' is not a positive number"),
    (['--train', '1000', '--test', '5', '--hours', 'nan'], "'nan' is not a positive number"),
    (['--train', '1000', '--test', '5', '--hours', '0'], "'0' is not a positive number"),
    (['--train', '1000', '--test', '5', '--stages', 'verfy'], "unknown stage 'verfy'"),
])
def test_rehearse_mistakes_are_one_line(args, message):
    import torch
    if 'cuda' in args and torch.cuda.is_available(): pytest.skip('a GPU is here')
    exe = Path(sys.executable).parent / 'lmkkit'
    res = subprocess.run([str(exe), 'rehearse', *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert 'Traceback' not in res.stderr and len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith('lmkkit rehearse: error: ')
