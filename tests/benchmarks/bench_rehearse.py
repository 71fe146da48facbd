"""Rehearse the recognition steps after embedding at several sizes, then project the full kernel on a GPU.

Run: python tests/benchmarks/bench_rehearse.py --sizes 100000x10000 400000x10000 [--dim 512] [--lgbm-queries 20000]
     [--steps knn qe soft_vote lgbm_fit write] [--backend auto] [--device cpu] [--gpu P100] [--extract-rate R] --out DIR

Each size runs in a fresh process (its memory figures are its own) through `lmkkit.rehearse.rehearse`; the step
tables are joined into DIR/steps_all.csv, the growth per work unit between sizes is printed, and the projection
of the full kernel (`project_run`, from each step's largest size) goes to DIR/projection.csv and DIR/timeline.png.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', nargs='+', default=['100000x10000'], help='TRAINxTEST pairs')
    ap.add_argument('--dim', type=int, default=512)
    ap.add_argument('--lgbm-queries', type=int, default=20_000)
    ap.add_argument('--steps', nargs='+', default=None)
    ap.add_argument('--backend', default='auto')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--gpu', default='P100')
    ap.add_argument('--extract-rate', type=float, default=None, help='measured images/s on that GPU')
    ap.add_argument('--out', required=True)
    ap.add_argument('--one', help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    from lmkkit.rehearse import DEFAULT_REHEARSAL, RunAssumptions, plot_projection, project_run, rehearse
    if args.one:
        train, test = map(int, args.one.split('x'))
        rehearse(out / args.one, train, test, args.dim, steps=args.steps or DEFAULT_REHEARSAL, device=args.device,
                 backend=args.backend, lgbm_queries=args.lgbm_queries, verbose=True)
        return
    tables = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, '--one', size, '--out', str(out), '--dim', str(args.dim),
               '--lgbm-queries', str(args.lgbm_queries), '--backend', args.backend, '--device', args.device]
        if args.steps: cmd += ['--steps', *args.steps]
        print(f'== {size} (load {os.getloadavg()[0]:.1f})', flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, 'PYTHONPATH': str(ROOT)})
        tables.append(pd.read_csv(out / size / 'steps.csv').assign(load=os.getloadavg()[0]))
    steps = pd.concat(tables, ignore_index=True)
    steps.to_csv(out / 'steps_all.csv', index=False)
    cols = ['train', 'test', 'step', 'seconds', 'peak_mib', 'peak_rise_mib', 'rss_end_mib', 'anon_end_mib', 'shape', 'load']
    print(steps[cols].to_string(index=False, float_format='%.1f'))
    real = steps[steps.real_run.astype(bool)].assign(us_per_unit=lambda d: 1e6 * d.seconds / d.work)
    print('\nmicroseconds per work unit (growth check):')
    print(real.pivot_table(index='step', columns='train', values='us_per_unit', sort=False).to_string(float_format='%.4g'))
    a = RunAssumptions(gpu=args.gpu, extract_rate=args.extract_rate, dim=args.dim)
    proj = project_run(steps, a)
    proj.to_csv(out / 'projection.csv', index=False)
    plot_projection(proj, out / 'timeline.png', a)
    print(f'\nprojection on a {a.gpu}:'); print(proj.to_string(index=False, float_format='%.2f'))
    print(json.dumps(dict(total_h=round(proj.end_h.iloc[-1], 2), budget_h=a.budget_share * a.limit_h,
                          fits=bool(proj.end_h.iloc[-1] <= a.budget_share * a.limit_h))))


if __name__ == '__main__':
    main()
