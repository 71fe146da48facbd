"""Benchmark lmkkit.search.knn backends: faiss vs torch vs numpy, time and peak memory.

Run: python tests/benchmarks/bench_knn.py [--sizes 1000x10000 10000x100000] [--dim 512] [--k 10] [--device cpu]
Each (backend, size) runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own;
the table reports the wall time of the search, the growth of peak RSS during it, and ratios against numpy.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _data(q: int, n: int, d: int):
    "Random unit vectors, float32, deterministic."
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    qs = rng.standard_normal((q, d), dtype=np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    return qs, x


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(backend: str, q: int, n: int, d: int, k: int, device: str, repeats: int) -> dict:
    "Time one backend in this process (called in a child); the result as a dict."
    sys.path.insert(0, str(ROOT))
    from lmkkit.search import knn
    qs, x = _data(q, n, d)
    knn(qs[:8], x[:1000], k, backend=backend, device=device)  # warm-up: imports, thread pools, CUDA context
    before = _peak_mib()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sims, idx = knn(qs, x, k, backend=backend, device=device)
        times.append(time.perf_counter() - t0)
    return dict(backend=backend, q=q, n=n, seconds=min(times), peak_mib=_peak_mib() - before,
                checksum=int(idx[:, 0].sum()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', nargs='+', default=['1000x10000', '10000x100000'], help='QxN pairs')
    ap.add_argument('--dim', type=int, default=512)
    ap.add_argument('--k', type=int, default=10)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--backends', nargs='+', default=['numpy', 'torch', 'faiss'])
    ap.add_argument('--one', nargs=3, metavar=('BACKEND', 'Q', 'N'), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        b, q, n = args.one
        print(json.dumps(run_one(b, int(q), int(n), args.dim, args.k, args.device, 3 if int(n) <= 20000 else 1)))
        return
    rows = []
    for size in args.sizes:
        q, n = map(int, size.split('x'))
        for b in args.backends:
            if b == 'numpy' and args.device != 'cpu': dev = 'cpu'
            else: dev = args.device
            out = subprocess.run([sys.executable, __file__, '--one', b, str(q), str(n), '--dim', str(args.dim),
                                  '--k', str(args.k), '--device', dev], capture_output=True, text=True, check=True)
            rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), 'device': dev})
            print(f"  {b:6s} {size:>13s} {rows[-1]['seconds']:8.3f} s", file=sys.stderr)
    print(f"\nkNN, d={args.dim}, k={args.k}, float32, {os.cpu_count()} CPU cores, device={args.device}\n")
    print('| Q x N | backend | device | time (s) | x numpy time | peak RSS growth (MiB) | same top-1 as numpy |')
    print('|---|---|---|---|---|---|---|')
    for size in args.sizes:
        q, n = map(int, size.split('x'))
        sel = [r for r in rows if (r['q'], r['n']) == (q, n)]
        base = next((r for r in sel if r['backend'] == 'numpy'), sel[0])
        for r in sel:
            print(f"| {q:,} x {n:,} | {r['backend']} | {r['device']} | {r['seconds']:.3f} | {r['seconds'] / base['seconds']:.2f} "
                  f"| {r['peak_mib']:.0f} | {r['checksum'] == base['checksum']} |")


if __name__ == '__main__':
    main()
