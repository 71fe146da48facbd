"""Memory and time of three re-ranking computations as the kit has them, against the lean forms proposed for them.

Run: python tests/benchmarks/bench_rerank_memory.py [--train 100000] [--test 10000] [--nonlandmarks 10000] [--out DIR]

On synthetic clustered embeddings (lmkkit.rehearse.make_embeddings) searched at k = 100 (and its top 10):
1. query expansion: `ctx.emb_of(top.ids)` + `expand` (float64) vs a float32 expansion by chunks of queries;
2. soft voting: `class_votes` ((Q, K, K) float64) vs a loop over the k voters ((Q, K) arrays only), k = 10 and 100;
3. the non-landmark penalty with w_candidate = 0: the stage as it is vs the query side alone.
Each row: wall time and the step's own peak RSS rise (VmHWM reset per step). The lean forms are checked equal to
the kit's results. Not part of the test suite.

Round two of issue 16 made the lean forms the kit's own (`expand` in float32, `class_votes` over the k voters,
the penalty without its candidate side at w_candidate = 0): the "kit" rows now measure those, so both columns
should agree; the round-one figures are in nbs/56_rehearse.ipynb.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lmkkit.rehearse import StepRecorder, make_embeddings  # noqa: E402
from lmkkit.rerank import RerankContext, class_votes, expand, nonlandmark_penalty, nonlandmark_similarity  # noqa: E402
from lmkkit.search import search, uint64_to_hex_ids  # noqa: E402


def lean_expand_rows(query: np.ndarray, emb: np.ndarray, rows: np.ndarray, sims: np.ndarray, alpha: float = 0.0,
                     chunk: int = 4096) -> np.ndarray:
    "α-QE in float32 by chunks of queries: neighbours gathered per chunk from index rows `rows` (Q, k)."
    out = np.empty(query.shape, np.float32)
    for s in range(0, len(query), chunk):
        w = np.maximum(sims[s:s + chunk], 0, dtype=np.float32) ** np.float32(alpha)
        o = query[s:s + chunk] + np.einsum('qk,qkd->qd', w, emb[rows[s:s + chunk]])
        out[s:s + chunk] = o / np.maximum(np.linalg.norm(o, axis=1, keepdims=True), 1e-12)
    return out


def lean_class_votes(sims: np.ndarray, labels: np.ndarray, k: int = 5, p: float = 8.0) -> np.ndarray:
    "`class_votes` with only (Q, K) arrays: one pass per voter j < k adds max(sim_j, 0)^p to the candidates sharing its label."
    w = np.maximum(sims[:, :k].astype(np.float64), 0) ** p
    votes = np.zeros(labels.shape, np.float64)
    for j in range(min(k, labels.shape[1])):
        same = (labels == labels[:, j:j + 1]) & (labels[:, j:j + 1] >= 0)
        same[:, j] = True
        votes += same * w[:, j:j + 1]
    return votes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--train', type=int, default=100_000)
    ap.add_argument('--test', type=int, default=10_000)
    ap.add_argument('--nonlandmarks', type=int, default=10_000)
    ap.add_argument('--out', default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp())
    tr, te = make_embeddings(out, args.train, args.test, 512, p_nonlandmark=0.5)
    x, q = tr.load(), te.load()
    nl = q[te.labels < 0][:args.nonlandmarks]  # non-landmark embeddings for the penalty
    rec = StepRecorder()
    with rec.step('search k=100 (setup)'):
        c100 = search(te.ids, q, tr.ids, x, 100, tr.labels)
    c10 = c100.topk(10)
    ctx = RerankContext(index_ids=uint64_to_hex_ids(tr.ids), index_emb=x, index_labels=tr.labels,
                        query_ids=uint64_to_hex_ids(te.ids), query_emb=q, nonlandmark_emb=nl)
    ctx.emb_of(c10.ids[:1]); ctx.query_emb_of(c10.query_ids[:1])  # build the id lookups outside the measured steps
    rows = ctx._index_pos.get_indexer(c10.ids[:, :3].ravel()).reshape(-1, 3)  # round two: search returns rows
    top = c10.topk(3)
    with rec.step('qe: emb_of + expand (kit, float64)'):
        e_kit = expand(ctx.query_emb_of(top.query_ids), ctx.emb_of(top.ids), top.sims)
    with rec.step('qe: lean float32 by chunks'):
        e_lean = lean_expand_rows(np.asarray(q), x, rows, top.sims)
    assert np.abs(e_kit - e_lean).max() < 1e-5
    for k in (10, 100):
        c = c10 if k == 10 else c100
        with rec.step(f'soft vote k={k}: class_votes (kit, QxKxK float64)'):
            v_kit = class_votes(c.sims, c.labels)
        with rec.step(f'soft vote k={k}: lean (QxK)'):
            v_lean = lean_class_votes(c.sims, c.labels)
        assert np.allclose(v_kit, v_lean, rtol=1e-12, atol=0)
    with rec.step('nonlandmark_penalty w_candidate=0 (kit)'):
        p_kit = nonlandmark_penalty(c10, ctx, w_candidate=0.0)
    with rec.step('nonlandmark_penalty: query side only'):
        n_q, _ = nonlandmark_similarity(ctx.query_emb_of(c10.query_ids), nl, 5)
        p_lean = c10.replace(sims=c10.sims - n_q[:, None]).sort()
    assert np.array_equal(p_kit.ids, p_lean.ids)
    df = rec.frame()[['step', 'seconds', 'peak_rise_mib', 'rss_end_mib', 'peak_exact']]
    df.to_csv(out / 'bench_rerank_memory.csv', index=False)
    print(f"train {args.train:,} x 512, test {args.test:,}, non-landmarks {len(nl):,}")
    print(df.to_string(index=False, float_format='%.2f'))
    for s in (tr, te): s.path.unlink()


if __name__ == '__main__':
    main()
