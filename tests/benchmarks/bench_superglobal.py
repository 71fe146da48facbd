"""Benchmark: SuperGlobal (issue 25): its CPU cost at M = 400, D = 512, and what it is worth on the two synthetic sets.

Run:  python tests/benchmarks/bench_superglobal.py timing    (one thread; about 2 minutes on a busy 2-core machine)
      python tests/benchmarks/bench_superglobal.py quality [OUT]   (OUT defaults to runs/bench_superglobal)
quality trains the demo model once into OUT/model (half a minute on an idle 2-core machine, 40+ minutes at load 20;
an OUT/model/model.pt already there is used as it is), then runs about 20 minutes at load 20.
timing: CPU seconds (process time, one thread, numpy included) per 1,000 queries of the `superglobal` stage on
Candidates of the top 400 at D = 512, next to baselines measured in the same run on the same queries: the exact kNN
that makes those candidates (top 400 of N = 100,000 rows), α-QE (expansion + a second search), and the two parts of
SuperGlobal (the M x M similarities, the rest). Prints the machine's load average before and after.
quality: the demo model (lmkkit.demo.DEMO_TRAIN: test_resnet, 64 px, 40 epochs, AdaCos, 64-d) trained on
`lmkkit synth`'s standard set; then (1) the ROxford-style set of `lmkkit synth OUT --revisited roxford5k` (its
defaults, and a larger one with 12 landmarks) through `lmkkit benchmark` with and without SuperGlobal, next to
QE / α-QE / DBA; (2) the GLDv2 set through both inference kernels (lmkkit.pipeline.run_inference) with each
chain, k = retrieval_k = 100 (so M = 100), reporting GAP / mAP@100 on the test solution and the held-out verdicts.
"""
import json
import os
import sys
import time
from pathlib import Path

PART = sys.argv[1] if len(sys.argv) > 1 else 'timing'
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
if PART == 'timing':
    for _var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ[_var] = '1'
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _cpu(fn):
    "(result, CPU seconds of this process)."
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def timing(q: int = 200, n: int = 100_000, d: int = 512, m: int = 400) -> dict:
    from lmkkit.rerank import RerankContext, STAGES, mdescaug, rerank_mda
    from lmkkit.search import search
    rng = np.random.default_rng(0)
    centres = _unit(rng, 2000, d)
    x = centres[rng.integers(0, 2000, n)] + 0.7 * _unit(rng, n, d)  # clustered, as embeddings are
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    qe = centres[rng.integers(0, 2000, q)] + 0.7 * _unit(rng, q, d)
    qe /= np.linalg.norm(qe, axis=1, keepdims=True)
    ids, qids = np.array([f'i{i}' for i in range(n)]), np.array([f'q{i}' for i in range(q)])
    ctx = RerankContext(index_ids=ids, index_emb=x, query_ids=qids, query_emb=qe)
    load0 = os.getloadavg()
    cands, t_knn = _cpu(lambda: search(qids, qe, ids, x, m))
    _, t_qe = _cpu(lambda: STAGES.get('qe')(cands, ctx, k=3, alpha=3.0))
    _, t_sg = _cpu(lambda: STAGES.get('superglobal')(cands, ctx, m=m))
    top = x[cands.rows]
    _, t_sim = _cpu(lambda: [top[s:s + 32] @ top[s:s + 32].transpose(0, 2, 1) for s in range(0, q, 32)])
    _, t_parts = _cpu(lambda: [rerank_mda(qe[s:s + 32], mdescaug(top[s:s + 32])) for s in range(0, q, 32)])
    load1 = os.getloadavg()
    per_k = lambda t: 1000 * t / q
    rows = {'kNN top 400 of 100,000 (baseline)': t_knn, 'alpha-QE (k 3, alpha 3: expand + search again)': t_qe,
            'superglobal stage (M 400)': t_sg, '  of which the M x M similarities': t_sim,
            '  MDescAug + RerankwMDA (no stage plumbing)': t_parts}
    print(f"\nCPU seconds per 1,000 queries, one thread, D = {d}, M = {m}, {q} queries timed "
          f"(load average {load0[0]:.2f} before, {load1[0]:.2f} after, {os.cpu_count()} cores)\n")
    print('| step | CPU s / 1,000 queries | ratio to kNN |\n|---|---:|---:|')
    for name, t in rows.items(): print(f'| {name} | {per_k(t):.2f} | {t / t_knn:.2f} |')
    macs = m * m * d
    print(f"\nsuperglobal: {macs / 1e6:.0f} M multiply-adds per query for the similarities; measured "
          f"{per_k(t_sg) / 1000:.4f} s per query (the registered estimate: S_PER_MAC x M²D = {2.5e-10 * macs:.4f} s)")
    return dict(d=d, m=m, queries=q, n=n, load_before=load0, load_after=load1, cores=os.cpu_count(),
                cpu_s_per_1000={k.strip(): per_k(t) for k, t in rows.items()})


def _train(out: Path) -> Path:
    from dataclasses import replace
    from lmkkit.synth import make_synthetic
    from lmkkit.train import PRESETS, train
    data, model_dir = out / 'data', out / 'model'
    if not (data / 'train.csv').is_file(): make_synthetic(data, seed=0, verbose=False)
    if not (model_dir / 'model.pt').is_file():
        cfg = replace(PRESETS['demo'], stages=((64, 40),), head='adacos', batch_size=64, lr=3e-3, embedding_size=64,
                      val_every_epochs=10)
        train(data, model_dir, cfg, device='cpu', verbose=False)
    return model_dir / 'model.pt'


REVISITED_SETUPS = {'kNN': {}, 'QE (k 2)': dict(qe=2), 'alpha-QE (k 2, alpha 3)': dict(qe=2, qe_alpha=3.0),
                    'DBA (k 2)': dict(dba=2), 'SuperGlobal re-ranking (M 400)': dict(superglobal=400),
                    'SuperGlobal re-ranking (M 400, K 2)': dict(superglobal=400, sg_k=2),
                    'SuperGlobal full (window GeM + scale max + re-ranking)':
                        dict(superglobal=400, pool='window_gem', scale_merge='scale_max')}


def revisited(out: Path, ckpt: Path) -> dict:
    from lmkkit.model import load_checkpoint
    from lmkkit.revisited import make_revisited_synthetic, run_benchmark
    model = load_checkpoint(ckpt, map_location='cpu')[0]
    res = {}
    for name, kw in dict(default=dict(), landmarks12=dict(n_landmarks=12)).items():
        root = out / f'revisited_{name}'
        if not (root / 'roxford5k' / 'gnd_roxford5k.pkl').is_file(): make_revisited_synthetic(root, 'roxford5k', **kw)
        print(f"\nROxford-style synthetic set ({name}): mAP Easy / Medium / Hard, %\n")
        print('| setup | E | M | H |\n|---|---:|---:|---:|')
        for setup, skw in REVISITED_SETUPS.items():
            t = run_benchmark('roxford5k', root, ckpt, verbose=False, model=model, **skw)
            res[(name, setup)] = t['map'].tolist()
            print(f"| {setup} | " + ' | '.join(f'{100 * v:.2f}' for v in t['map']) + ' |')
    return {f'{a}: {b}': v for (a, b), v in res.items()}


GLDV2_CHAINS = {'kNN': (), 'QE (k 3)': ('qe',), 'alpha-QE (k 3, alpha 3)': ('qe',), 'DBA (k 2)': ('dba',),
                'SuperGlobal (M 100)': ('superglobal',)}


def gldv2(out: Path, ckpt: Path) -> dict:
    from lmkkit.pipeline import run_inference
    res = {}
    for track, metric in (('recognition', 'gap'), ('retrieval', 'map@100')):
        print(f"\nGLDv2 synthetic set, {track}: {metric} on the test solution; held-out estimate and verdict\n")
        print(f'| chain | {metric} | held-out | adopted |\n|---|---:|---:|---|')
        for name, chain in GLDV2_CHAINS.items():
            settings = {'qe': dict(alpha=3.0)} if name.startswith('alpha') else {}
            run_dir = out / 'runs' / track / name.split()[0]
            r = run_inference(data_dir=str(out / 'data'), checkpoint=str(ckpt), out_dir=str(run_dir),
                              cache_dir=str(out / 'cache'), track=track, stages=chain, stage_settings=settings,
                              k=100, retrieval_k=100, time_limit_hours=24.0, reserve_minutes=1.0, verbose=False,
                              device='cpu')
            m = r.metrics()
            rows = [s for s in m['stages'] if s['stage'] not in ('final',)]
            last = rows[-1]
            hold = '' if last.get('holdout') is None else f"{last['holdout']:.4f}"
            print(f"| {name} | {last[metric]:.4f} | {hold} | {last['adopted']} |")
            res[f'{track}: {name}'] = dict(score=last[metric], holdout=last.get('holdout'), adopted=last['adopted'],
                                           final=m[metric])
    return res


def main():
    out = Path(sys.argv[2] if len(sys.argv) > 2 else 'runs/bench_superglobal').resolve()
    out.mkdir(parents=True, exist_ok=True)
    if PART == 'timing': result = timing()
    else:
        ckpt = _train(out)
        result = dict(revisited=revisited(out, ckpt), gldv2=gldv2(out, ckpt))
    (out / f'{PART}.json').write_text(json.dumps(result, indent=1, default=str))


if __name__ == '__main__':
    main()
