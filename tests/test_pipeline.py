"Inference pipeline end to end on a tiny synthetic set: both tracks, a deadline too short for every stage, bad input."
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lmkkit.data import id_to_path
from lmkkit.metrics import validate_submission
from lmkkit.model import create_model, save_checkpoint
from lmkkit.data import submission_ids
from lmkkit.pipeline import SEED_STAGES, run_inference
from lmkkit.synth import make_synthetic

TINY = dict(n_landmarks=6, n_unseen=2, n_families=2, train_per_landmark=5, index_per_landmark=3, test_per_landmark=2,
            n_train_nonlandmarks=10, n_index_nonlandmarks=4, n_test_nonlandmarks=6, image_size=64)
FAST = dict(image_size=32, batch_size=16, verify_top_n=2, k=5, retrieval_k=20, verbose=False, lgbm_folds=2, lgbm_rounds=10,
            holdout_frac=0.3, holdout_unseen_frac=0.2)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "A tiny synthetic GLDv2 folder and an untrained tiny checkpoint."
    root = tmp_path_factory.mktemp('pipeline')
    make_synthetic(root/'data', seed=0, verbose=False, **TINY)
    model = create_model('test_resnet', embedding_size=16, head=None)
    save_checkpoint(root/'model.pt', model, None, extra={'train_config': {'stages': [[32, 1]]}})
    return root


def _check_submission(res, data_dir, track):
    ids = submission_ids(data_dir, track)
    got_track, _ = validate_submission(res.submission, ids)
    assert got_track == track
    return ids


def test_recognition_full_chain(world, tmp_path):
    res = run_inference(data_dir=str(world/'data'), checkpoint=str(world/'model.pt'), out_dir=str(tmp_path),
                        cache_dir=str(world/'cache'), stages=list(SEED_STAGES['recognition']), min_holdout_landmarks=1, **FAST)
    _check_submission(res, world/'data', 'recognition')
    stages = [r['stage'] for r in res.ablation]
    assert stages[0] == 'knn_top1' and stages[-1] == 'final'
    assert stages[1:-1] == list(SEED_STAGES['recognition']), res.skipped
    assert all(isinstance(r['gap'], float) for r in res.ablation)
    metrics = json.loads((tmp_path/'metrics.json').read_text())
    assert metrics['stages'] == res.ablation and metrics['gap'] == res.ablation[-1]['gap']
    assert metrics['mean_conf_nonlandmark'] is not None and metrics['mean_conf_landmark'] is not None
    timeline = pd.read_csv(tmp_path/'timeline.csv')
    assert {'empty_submission', 'embed_test', 'knn', 'verify', 'lgbm'} <= set(timeline['step'])
    assert (tmp_path/'reranker'/'reranker.json').is_file()


def test_retrieval_full_chain(world, tmp_path):
    res = run_inference(data_dir=str(world/'data'), checkpoint=str(world/'model.pt'), out_dir=str(tmp_path), track='retrieval',
                        cache_dir=str(world/'cache'), stages=list(SEED_STAGES['retrieval']), **FAST)
    _check_submission(res, world/'data', 'retrieval')
    assert [r['stage'] for r in res.ablation] == ['knn', *SEED_STAGES['retrieval'], 'final'], res.skipped
    assert all(0 <= r['map@100'] <= 1 for r in res.ablation)


def test_deadline_too_short(world, tmp_path):
    """A limit that cannot hold every stage: the run ends inside it with a complete submission and logs what it skipped.

    The limit is 60% of what the unlimited run took on this machine, measured in the same test, so that it is too
    short on a fast machine and a slow one alike."""
    def run(out, **limits):
        return run_inference(data_dir=str(world/'data'), checkpoint=str(world/'model.pt'), out_dir=str(out),
                             cache_dir=str(out/'cache'), stages=list(SEED_STAGES['recognition']),
                             **{**FAST, 'verify_top_n': 10, 'k': 10}, **limits)
    t0 = time.monotonic()
    run(tmp_path/'unlimited')
    limit_s = 0.6 * (time.monotonic() - t0)
    t0 = time.monotonic()
    res = run(tmp_path, time_limit_hours=limit_s / 3600, reserve_minutes=0.1 * limit_s / 60,
              kernel_start=time.time())  # the limit counts from now, not from pytest's start
    assert time.monotonic() - t0 < limit_s
    _check_submission(res, world/'data', 'recognition')
    timeline = pd.read_csv(tmp_path/'timeline.csv')
    cut = [n for n in timeline['note'].fillna('') if 'skipped' in n or 'shortened' in n]
    assert cut or res.skipped, timeline
    assert res.ablation[0]['stage'] == 'knn_top1' or any('embed' in s for s in res.skipped)


def _bad_folder(src: Path, dst: Path) -> dict:
    "Copy the tiny set and damage it in every way GLDv2 images are damaged."
    shutil.copytree(src, dst)
    train = pd.read_csv(dst/'train.csv', dtype=str)
    tests = sorted(p.stem for p in (dst/'test').rglob('*.jpg'))
    t = [id_to_path(dst, 'train', i) for i in train['id']]
    t[0].write_bytes(b'not an image at all')  # corrupt
    t[1].write_bytes(t[1].read_bytes()[:200])  # truncated
    Image.open(t[2]).convert('L').save(t[2], 'JPEG')  # grayscale
    Image.open(t[3]).convert('CMYK').save(t[3], 'JPEG')  # CMYK
    Image.open(t[4]).save(t[4], 'PNG')  # PNG bytes in a .jpg
    exif = Image.Exif(); exif[0x0112] = 6  # EXIF: rotate 90 degrees
    Image.open(t[5]).save(t[5], 'JPEG', exif=exif.tobytes())
    Image.new('RGB', (1, 1), (200, 10, 10)).save(t[6], 'JPEG')  # tiny
    Image.new('RGB', (3000, 2000), (10, 120, 10)).save(t[7], 'JPEG', quality=30)  # huge
    t[8].unlink()  # listed in train.csv, file missing
    q = [id_to_path(dst, 'test', i) for i in tests]
    q[0].write_bytes(b'\xff\xd8\xff garbage')
    q[1].unlink()  # a sample-submission id whose test image is missing
    return dict(missing_train=train['id'][8], missing_test=tests[1], bad_test=tests[0])


@pytest.mark.parametrize('track', ['recognition', 'retrieval'])
def test_bad_input(world, tmp_path, track):
    bad = _bad_folder(world/'data', tmp_path/'data')
    res = run_inference(data_dir=str(tmp_path/'data'), checkpoint=str(world/'model.pt'), out_dir=str(tmp_path/'out'),
                        cache_dir=str(tmp_path/'cache'), track=track, **FAST)
    ids = _check_submission(res, tmp_path/'data', track)
    assert bad['missing_test'] in ids and bad['bad_test'] in ids
    _, preds = validate_submission(res.submission)
    assert bad['missing_test'] not in preds and bad['bad_test'] not in preds
    assert res.report['embed_test_unreadable'] == 2
    if track == 'recognition': assert res.report['embed_train_unreadable'] == 3  # corrupt, truncated, missing
    assert len(preds) > 0


def test_empty_test_folder(world, tmp_path):
    "No test images and no sample submission: a valid submission with a header only."
    shutil.copytree(world/'data', tmp_path/'data')
    shutil.rmtree(tmp_path/'data'/'test'); (tmp_path/'data'/'test').mkdir()
    for f in ('recognition_sample_submission.csv', 'recognition_solution.csv'): (tmp_path/'data'/f).unlink()
    res = run_inference(data_dir=str(tmp_path/'data'), checkpoint=str(world/'model.pt'), out_dir=str(tmp_path/'out'),
                        cache_dir=str(world/'cache'), **FAST)
    assert res.submission.read_text() == 'id,landmarks\n'
    assert validate_submission(res.submission, [])[0] == 'recognition'


KERNELS = Path(__file__).resolve().parents[1] / 'kaggle_kernels'


@pytest.mark.parametrize('track,bad,message', [
    ('recognition', dict(time_limit_hours='twelve'), "parameter 'time_limit_hours' must be float"),
    ('recognition', dict(verifier='loftr', verifier_weights={'weights': '/missing/loftr.ckpt'}), 'loftr.ckpt not found'),
    ('retrieval', dict(verifier='orb'), "parameter 'verifier': unknown 'orb'"),
    ('retrieval', dict(checkpoints=['a.pt', {'path': 'b.pt', 'weight': 0}]), r"parameter 'checkpoints'\[1\] 'weight' must be a number > 0"),
])
def test_inference_kernel_stops_in_its_first_cells_on_bad_parameters(world, tmp_path, track, bad, message):
    import papermill as pm
    name = f'lmkkit-{track}'
    params = dict(data_dir=str(world/'data'), checkpoint=str(world/'model.pt'), out_dir=str(tmp_path/'out'), **bad)
    with pytest.raises(pm.PapermillExecutionError, match=message):
        pm.execute_notebook(str(KERNELS/name/f'{name}.ipynb'), str(tmp_path/'run.ipynb'), parameters=params,
                            kernel_name='python3', progress_bar=False)
    assert not (tmp_path/'out'/'submission.csv').exists()


@pytest.mark.parametrize('track,first', [('recognition', 'knn_top1'), ('retrieval', 'knn')])
def test_public_run_takes_the_cheap_path(world, tmp_path, track, first):
    "On the public run (forced here; detected by counts on Kaggle) only kNN runs, and the submission is complete."
    res = run_inference(data_dir=str(world/'data'), checkpoint=str(world/'model.pt'), out_dir=str(tmp_path), track=track,
                        cache_dir=str(world/'cache'), public_run='yes', **FAST)
    _check_submission(res, world/'data', track)
    assert [r['stage'] for r in res.ablation] == [first, 'final']
    assert any(s.startswith('stages') and 'public run' in s for s in res.skipped), res.skipped
    assert not {'verify', 'lgbm', 'holdout'} & set(res.timeline['step'])  # nothing costly ran


KERNEL_PATHS = {'data_dir', 'checkpoint'}  # where a kernel's inputs sit on Kaggle: the kernel's own, not the config's


@pytest.mark.parametrize('track', ['recognition', 'retrieval'])
def test_inference_kernel_states_only_the_config_defaults(track):
    "A kernel parameter that is an InferenceConfig field has the config's default; the rest are the verify stage's or a dict."
    import dataclasses
    from lmkkit.kaggle import read_parameters
    from lmkkit.pipeline import InferenceConfig
    from lmkkit.rerank import stage_defaults
    params = {n: p.value for n, p in read_parameters(KERNELS/f'lmkkit-{track}'/f'lmkkit-{track}.ipynb').items()}
    defaults = {f.name: getattr(InferenceConfig(), f.name) for f in dataclasses.fields(InferenceConfig)}
    verify = stage_defaults('verify')
    for name, value in params.items():
        if name in KERNEL_PATHS: continue
        if name in defaults: assert value == defaults[name], f"{track} kernel: {name} = {value!r}, InferenceConfig says {defaults[name]!r}"
        elif name == 'verifier': assert value == {**verify, **InferenceConfig(track=track).chain['verify']}['verifier']
        else: assert name in ('verifier_weights', 'overrides') and value == {}, name
    assert len(params) <= 12, sorted(params)  # only what users change most; the rest goes through `overrides`


def test_a_stage_added_in_one_decorated_function_is_planned_run_and_ablated(world, tmp_path):
    "The extension point: register a stage, name it in `stages`; no other edit."
    from lmkkit.rerank import STAGES, register_stage

    @register_stage('_reverse_ties', cost_s=1e-5, needs=('query_ids',))
    def reverse_ties(cands, ctx, eps: float = 1e-9):
        order = np.tile(np.arange(cands.k), (len(cands), 1))
        order[np.abs(cands.sims[:, 0] - cands.sims[:, 1]) < eps, :2] = [1, 0]
        return cands.take(order)

    try:
        res = run_inference(data_dir=str(world/'data'), checkpoint=str(world/'model.pt'), out_dir=str(tmp_path),
                            cache_dir=str(world/'cache'), stages=['_reverse_ties', 'soft_vote'],
                            stage_settings={'_reverse_ties': {'eps': 0.5}}, **FAST)
    finally:
        STAGES._fns.pop('_reverse_ties')
    assert [r['stage'] for r in res.ablation] == ['knn_top1', '_reverse_ties', 'soft_vote', 'final']
    row = res.timeline.set_index('step').loc['_reverse_ties']
    n_queries = int(res.timeline.set_index('step').loc['embed_test', 'note'].split('/')[0])
    assert row.ran and row.planned_s == pytest.approx(1e-5 * (n_queries + res.report['holdout_queries']))  # its registered cost x the test and held-out queries


def test_short_limit_default_reserve(world, tmp_path):
    "`time_limit_hours=0.01` (36 s) with the default 20-minute reserve runs: the reserve shrinks and the timeline says how."
    res = run_inference(data_dir=str(world/'data'), checkpoint=str(world/'model.pt'), out_dir=str(tmp_path),
                        cache_dir=str(tmp_path/'cache'), time_limit_hours=0.01, **FAST)
    _check_submission(res, world/'data', 'recognition')
    note = pd.read_csv(tmp_path/'timeline.csv').set_index('step').loc['empty_submission', 'note']
    assert 'reserve 3.6 s (10% of the limit' in note, note
