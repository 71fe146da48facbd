"Search and re-ranking end to end on small random data: kNN backends agree, every stage switches on and off."
import dataclasses

import numpy as np
import pytest

from lmkkit.core import ConfigError, Deadline
from lmkkit.lgbm import predict_reranked, synthetic_candidates, train_reranker
from lmkkit.metrics import gap
from lmkkit.plan import run_stages
from lmkkit.rerank import STAGES, RerankContext, make_stage, recognition_predictions, retrieval_predictions, stage_defaults
import lmkkit.stages  # noqa: F401  (every stage of the kit)
from lmkkit.search import Candidates, knn, search

CHEAP_STAGES = ['qe', 'nonlandmark_penalty', 'soft_vote']


def _unit(n, d, rng):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope='module')
def world():
    "An index of 20 landmarks x 10 noisy views, 12 queries of those landmarks, 30 non-landmarks."
    rng = np.random.default_rng(0)
    centres = _unit(20, 32, rng)
    labels = np.repeat(np.arange(20), 10)
    emb = centres[labels] + 0.6 * _unit(200, 32, rng)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q_lab = rng.integers(0, 20, 12)
    q = centres[q_lab] + 0.6 * _unit(12, 32, rng)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ctx = RerankContext(index_ids=np.array([f'i{j:03d}' for j in range(200)]), index_emb=emb, index_labels=labels,
                        query_ids=np.array([f'q{j:02d}' for j in range(12)]), query_emb=q,
                        nonlandmark_emb=_unit(30, 32, rng))
    cands = search(ctx.query_ids, q, ctx.index_ids, emb, 10, labels)
    return cands, ctx, {qid: [int(l)] for qid, l in zip(ctx.query_ids, q_lab)}


def test_registry_lists_the_stages():
    names = STAGES.names
    for name in CHEAP_STAGES + ['lgbm']:
        assert name in names
        assert STAGES.get(name).cost_s > 0 and STAGES.get(name).name == name
    assert stage_defaults('soft_vote') == dict(k=5, p=8.0)
    assert 'model' in stage_defaults('lgbm')


@pytest.mark.parametrize('name', CHEAP_STAGES)
def test_each_stage_on_and_off(world, name):
    cands, ctx, truth = world
    off, rep_off = run_stages(cands, ctx, [])
    assert rep_off.empty and off is cands
    on, rep = run_stages(cands, ctx, [name])
    assert rep.stage.tolist() == [name] and rep.ran.all()
    assert (len(on), on.k) == (len(cands), cands.k)
    assert (np.diff(on.sims, axis=1) <= 1e-6).all() or name == 'soft_vote'  # similarity order kept, except by votes
    assert set(on.ids.ravel()) <= set(ctx.index_ids)
    assert 0 <= gap(recognition_predictions(on), truth) <= 1


def test_stage_effects(world):
    cands, ctx, truth = world
    qe = make_stage('qe', dict(k=3))(cands, ctx)
    assert not np.array_equal(qe.sims, cands.sims)
    pen = make_stage('nonlandmark_penalty')(cands, ctx)
    np.testing.assert_allclose(pen.features['sim_raw'] - pen.sims,
                               pen.features['nl_sim'] + pen.features['query_nl_sim'], atol=1e-6)
    sv = make_stage('soft_vote')(cands, ctx)
    assert (sv.features['vote'][:, 0] >= sv.features['vote'][:, 1:5].max(1) - 1e-9).all()
    full, rep = run_stages(cands, ctx, CHEAP_STAGES)
    assert rep.ran.all()
    assert {'vote', 'nl_sim', 'score'} <= set(full.features)
    assert all(len(v) == 10 for v in retrieval_predictions(full).values())


def test_bad_settings_and_deadline(world):
    cands, ctx, _ = world
    with pytest.raises(ConfigError, match="stage 'qe' has no setting 'alfa'; its settings are: k, alpha"):
        run_stages(cands, ctx, ['qe'], dict(qe=dict(alfa=3)))
    out, rep = run_stages(cands, dataclasses.replace(ctx, nonlandmark_emb=None), ['nonlandmark_penalty', 'qe'])
    assert rep.ran.tolist() == [False, True] and rep.note[0] == 'no non-landmark images (nonlandmarks.csv)'
    spent = dataclasses.replace(ctx, deadline=Deadline(1, clock=lambda: 0.0, start=-5.0))
    out, rep = run_stages(cands, spent, CHEAP_STAGES)
    assert not rep.ran.any() and out is cands


def test_knn_backends_agree():
    rng = np.random.default_rng(1)
    q, x = _unit(50, 64, rng), _unit(2000, 64, rng)
    ref = np.argsort(-(q.astype(np.float64) @ x.T.astype(np.float64)), axis=1)[:, :10]
    results = {b: knn(q, x, 10, backend=b) for b in ['numpy', 'torch', 'faiss']}
    results['faiss-sharded'] = knn(q, x, 10, backend='faiss', max_index_rows=300)
    for name, (sims, idx) in results.items():
        assert sims.dtype == np.float32 and idx.dtype == np.int64, name
        np.testing.assert_array_equal(idx, ref, err_msg=name)
        np.testing.assert_allclose(sims, results['numpy'][0], atol=1e-5, err_msg=name)


def test_lgbm_stage_in_the_pipeline():
    tr, tr_truth = synthetic_candidates(400, seed=5)
    te, te_truth = synthetic_candidates(300, seed=6)
    model = train_reranker(tr, tr_truth, params=dict(num_threads=1), n_folds=2, num_boost_round=20)
    out, rep = run_stages(te, RerankContext(), ['soft_vote', 'lgbm'], dict(lgbm=dict(model=model)))
    assert rep.ran.all()
    assert gap(recognition_predictions(out), te_truth) > gap(recognition_predictions(te), te_truth) + 0.2
    assert set(predict_reranked(model, te)) == set(recognition_predictions(out))


def test_candidates_round_trip_through_frame(world):
    cands, _, _ = world
    df = cands.topk(3).to_frame()
    assert len(df) == 36 and df.groupby('query')['rank'].max().eq(2).all()
    assert isinstance(Candidates.concat([cands.select([0]), cands.select([1])]), Candidates)
