"""Rehearse the recognition kernel after extraction at several sizes, then project the full kernel on a GPU.

Run: python tests/benchmarks/bench_rehearse.py --sizes 100000x10000 400000x10000 [--dim 512] [--hours 0.25 0.3]
     [--stages nonlandmark_penalty verify lgbm] [--device cpu] [--images DIR] [--gpu P100] [--extract-rate R] --out DIR

Each size runs in a fresh process (its memory figures are its own) through `lmkkit.rehearse.rehearse`; the step
tables are joined into DIR/steps_all.csv, the seconds per work unit of every step are printed side by side (the
growth check: constant when a step grows as its cost model says), and the projection of the full kernel
(`project_run`, from each step's largest size) goes to DIR/projection.csv and DIR/projection.png.
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
    ap.add_argument('--hours', type=float, nargs='+', default=[1.0], help="each run's own time limit (one value, or one per size)")
    ap.add_argument('--stages', nargs='*', default=None)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--images', default=None, help='photo pool for verification')
    ap.add_argument('--max-holdout', type=int, default=20_000)
    ap.add_argument('--gpu', default='P100')
    ap.add_argument('--extract-rate', type=float, default=None, help='measured images/s on that GPU')
    ap.add_argument('--out', required=True)
    ap.add_argument('--one', help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    from lmkkit.rehearse import RunAssumptions, plot_projection, project_run, rehearse
    if args.one:
        train, test = map(int, args.one.split('x'))
        rehearse(out / args.one, train, test, args.dim, args.stages, args.hours[0], args.device, args.images,
                 max_holdout=args.max_holdout)
        return
    tables = []
    hours = args.hours * len(args.sizes) if len(args.hours) == 1 else args.hours
    if len(hours) != len(args.sizes): ap.error(f"--hours: give one value or one per size ({len(args.sizes)})")
    for size, h in zip(args.sizes, hours):
        cmd = [sys.executable, __file__, '--one', size, '--out', str(out), '--dim', str(args.dim), '--hours', str(h),
               '--device', args.device, '--max-holdout', str(args.max_holdout)]
        if args.stages is not None: cmd += ['--stages', *args.stages]
        if args.images: cmd += ['--images', args.images]
        load0 = os.getloadavg()[0]
        print(f'== {size} (load {load0:.1f})', flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, 'PYTHONPATH': str(ROOT)})
        tables.append(pd.read_csv(out / size / 'steps.csv').assign(load_start=load0, load_end=os.getloadavg()[0]))
    steps = pd.concat(tables, ignore_index=True)
    steps.to_csv(out / 'steps_all.csv', index=False)
    cols = ['train', 'test', 'step', 'planned_s', 'actual_s', 'peak_mib', 'rss_mib', 'work', 'note']
    print(steps[cols].to_string(index=False, float_format='%.1f', max_colwidth=60))
    timed = steps[steps.work > 0].assign(us_per_unit=lambda d: 1e6 * d.actual_s / d.work)
    print('\nmicroseconds per work unit (growth check):')
    print(timed.pivot_table(index='step', columns='train', values='us_per_unit', sort=False).to_string(float_format='%.4g'))
    print('\npeak MiB per step:')
    print(steps.pivot_table(index='step', columns='train', values='peak_mib', sort=False).to_string(float_format='%.0f'))
    a = RunAssumptions(gpu=args.gpu, extract_rate=args.extract_rate, dim=args.dim, holdout_landmarks=args.max_holdout)
    proj = project_run(steps, a)
    proj.to_csv(out / 'projection.csv', index=False)
    plot_projection(proj, out / 'projection.png', a)
    print(f'\nprojection on a {a.gpu}:'); print(proj.to_string(index=False, float_format='%.2f'))
    print(json.dumps(dict(total_h=round(proj.end_h.iloc[-1], 2), budget_h=a.budget_share * a.limit_h,
                          fits=bool(proj.end_h.iloc[-1] <= a.budget_share * a.limit_h),
                          peak_mib=float(steps[steps.step != 'generate'].peak_mib.max()))))


if __name__ == '__main__':
    main()
