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


# --- SuperGlobal (issue 25) ---------------------------------------------------------------------------------
def _official_superglobal(X, Q, M=400, K=9, beta=0.15):
    """A plain transcription of the official loop (ShihaoShao-GH/SuperGlobal, MIT: test/test_model.py,
    modules/reranking/MDescAug.py then RerankwMDA.py), on the CPU: database rows per query, (n_queries, N)."""
    import torch
    X, Q = torch.as_tensor(X), torch.as_tensor(Q)
    ranks = torch.argsort(-torch.matmul(X, Q.T), axis=0)  # N x nq
    K1 = K + 1
    # MDescAug
    ranks_trans_1000 = torch.transpose(ranks, 1, 0)[:, :M]
    X_tensor1 = X[ranks_trans_1000]
    res_ie = torch.einsum('abc,adc->abd', X_tensor1, X_tensor1)
    res_ie_ranks = torch.unsqueeze(torch.argsort(-res_ie.clone(), axis=-1)[:, :, :K1], -1)
    res_ie_ranks_value = torch.unsqueeze(-torch.sort(-res_ie.clone(), axis=-1)[0][:, :, :K1], -1)
    res_ie_ranks_value[:, :, 1:, :] *= beta
    res_ie_ranks_value[:, :, 0:1, :] = 1.
    res_ie_ranks = torch.squeeze(res_ie_ranks, -1)
    x_dba = X[ranks_trans_1000]
    x_dba = torch.stack([j[i] for i, j in zip(res_ie_ranks, x_dba)], 0)
    x_dba = torch.sum(x_dba * res_ie_ranks_value, 2) / torch.sum(res_ie_ranks_value, 2)
    res_top1000_dba = torch.einsum('ac,adc->ad', Q, x_dba)
    ranks_trans_1000_pre = torch.argsort(-res_top1000_dba, -1)
    rerank_dba_final = [ranks_trans_1000[i][ranks_trans_1000_pre[i]] for i in range(ranks_trans_1000_pre.shape[0])]
    # RerankwMDA
    ranks_trans_1000 = torch.stack(rerank_dba_final, 0)
    ranks_value_trans_1000 = -torch.sort(-res_top1000_dba, -1)[0]
    ranks_trans = torch.unsqueeze(ranks_trans_1000_pre[:, :K1], -1)
    X1 = torch.take_along_dim(x_dba, ranks_trans, 1)
    X2 = torch.take_along_dim(x_dba, torch.unsqueeze(ranks_trans_1000_pre, -1), 1)
    X1 = torch.max(X1, 1, True)[0]
    res_rerank = torch.sum(torch.einsum('abc,adc->abd', X1, X2), 1)
    res_rerank = (ranks_value_trans_1000 + res_rerank) / 2.
    res_rerank_ranks = torch.argsort(-res_rerank, axis=-1)
    ranks_transpose = torch.transpose(ranks, 1, 0)[:, M:]
    out = [torch.concat([ranks_trans_1000[i][res_rerank_ranks[i]], ranks_transpose[i]], 0)
           for i in range(res_rerank_ranks.shape[0])]
    return torch.stack(out, 0).numpy()  # queries x database (the official code transposes back)


@pytest.mark.parametrize('n,d,nq,M,K,beta', [(60, 16, 7, 20, 9, 0.15), (300, 32, 5, 400, 9, 0.15),
                                             (120, 8, 4, 50, 3, 0.5), (40, 24, 3, 40, 0, 0.15)])
def test_superglobal_equals_the_official_loop(n, d, nq, M, K, beta):
    from lmkkit.rerank import superglobal_ranks
    rng = np.random.default_rng(n + d)
    x, q = _unit(n, d, rng).astype(np.float64), _unit(nq, d, rng).astype(np.float64)  # float64: no near-ties
    got = superglobal_ranks(q, x, M, K, beta)
    assert got.shape == (nq, n) and got.dtype == np.int64
    np.testing.assert_array_equal(got, _official_superglobal(x, q, M, K, beta))
    assert (np.sort(got, 1) == np.arange(n)).all()  # every row is a permutation of the database


def test_superglobal_float32_close_to_official():
    "In float32 (the official dtype) the orders agree but for near-ties of the float rounding."
    from lmkkit.rerank import superglobal_ranks
    rng = np.random.default_rng(3)
    x, q = _unit(500, 64, rng), _unit(6, 64, rng)
    assert (superglobal_ranks(q, x) == _official_superglobal(x, q)).mean() > 0.95


def _sg_world(track_seed):
    "Two disjoint query sets (test and held-out) of 30 landmarks x 12 views, where neighbours of neighbours help."
    rng = np.random.default_rng(track_seed)
    centres = _unit(30, 32, rng)
    labels = np.repeat(np.arange(30), 12)
    emb = centres[labels] + 0.9 * _unit(360, 32, rng)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = np.array([f'i{j:03d}' for j in range(360)])
    def side(n, seed):
        r = np.random.default_rng(seed)
        lab = r.integers(0, 30, n)
        q = centres[lab] + 0.9 * _unit(n, 32, r)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        qids = np.array([f'q{seed}_{j:03d}' for j in range(n)])
        ctx = RerankContext(index_ids=ids, index_emb=emb, index_labels=labels, query_ids=qids, query_emb=q)
        return search(qids, q, ids, emb, 100, labels), ctx, lab
    return side(40, 1), side(40, 2), labels, ids


@pytest.mark.parametrize('track', ['recognition', 'retrieval'])
def test_superglobal_stage_judged_on_held_out_queries(track):
    from lmkkit.metrics import map_at_k
    from lmkkit.plan import Holdout
    (tc, tctx, tlab), (hc, hctx, hlab), labels, ids = _sg_world(0)
    if track == 'recognition':
        truth = lambda c, lab: {q: [int(l)] for q, l in zip(c.query_ids, lab)}
        score = lambda c, t: gap(recognition_predictions(c), t)
    else:
        truth = lambda c, lab: {q: ids[labels == l].tolist() for q, l in zip(c.query_ids, lab)}
        score = lambda c, t: map_at_k(retrieval_predictions(c), t, 100)
    verdicts = []
    out, tl = run_stages(tc, tctx, ['superglobal'], settings=dict(superglobal=dict(m=100)),
                         holdout=Holdout(hctx, hc, truth(hc, hlab)), judge=score, min_landmarks=1,
                         on_answer=lambda c, s, v: verdicts.append(v))
    assert tl.stage.tolist() == ['superglobal'] and tl.ran.all()
    assert len(verdicts) == 1 and verdicts[0]['holdout'] is not None
    before = score(hc, truth(hc, hlab))
    assert verdicts[0]['adopted'] == (verdicts[0]['holdout'] >= before)  # never worse on the held-out queries
    if verdicts[0]['adopted']:
        assert not np.array_equal(out.ids, tc.ids) and 'sim_raw' in out.features
        assert score(out, truth(tc, tlab)) >= score(tc, truth(tc, tlab)) - 0.05
    else:
        assert out is tc


def test_superglobal_stage_stops_at_the_deadline():
    "Queries past the deadline keep their kNN answer; the work done is reported to the planner; no double counts."
    from lmkkit.rerank import SG_CHUNK, superglobal
    (tc, tctx, _), _, _, _ = _sg_world(0)
    cands = Candidates.concat([tc, tc.replace(query_ids=np.char.add(tc.query_ids, 'b'), skipped={})])  # 80 queries
    cands = cands.replace(skipped={'unreadable': 2})
    ctx = dataclasses.replace(tctx, query_ids=cands.query_ids, query_emb=np.concatenate([tctx.query_emb] * 2))
    ticks = iter(range(100))
    ctx.deadline = Deadline(0.5, clock=lambda: float(next(ticks)), start=0.0)  # expires at the second chunk's check
    out, done = superglobal(cands, ctx, m=50)
    assert done == SG_CHUNK and out.skipped == {'unreadable': 2}
    assert not np.array_equal(out.ids[:SG_CHUNK], cands.ids[:SG_CHUNK])
    np.testing.assert_array_equal(out.ids[SG_CHUNK:], cands.ids[SG_CHUNK:])
    np.testing.assert_array_equal(out.features['sim_raw'][SG_CHUNK:], cands.sims[SG_CHUNK:])
