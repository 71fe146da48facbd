"""Benchmark: vectorised `gap` against the official scorer's plain loop (`gap_reference`) on 1,000,000 predictions.

Run: python tests/benchmarks/bench_gap.py [--n 1000000] [--repeats 3]
Prints a markdown table: CPU times of this process (best of `repeats`; CPU rather than wall time because the
machine may be shared), the speed-up, the agreement, and where `gap`'s time goes.
"""
from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmark this checkout, installed or not
from lmkkit.metrics import _PRED_DTYPE, _break_ties, _gap_arrays, _ids, _precision_sum, gap, gap_reference


def make_case(n: int, decimals: int | None, seed: int = 0):
    """n predictions on n test images (a third of them non-landmarks, half the others predicted right).

    Laid out like a real run: predictions in sorted test-id order (as `lmkkit.data.list_ids` lists them),
    the solution in another order, each dict with its own id strings, as if read from two files.
    """
    rng = np.random.default_rng(seed)
    numbers = np.unique(rng.integers(0, 2**63, n + n // 100))[:n]
    truth = rng.integers(0, 200_000, len(numbers))
    landmark = np.where(rng.random(len(numbers)) < .5, truth, rng.integers(0, 200_000, len(numbers)))
    conf = rng.random(len(numbers))
    if decimals is not None: conf = conf.round(decimals)
    predictions = {f"{x:016x}": (lm, c) for x, lm, c in zip(numbers.tolist(), landmark.tolist(), conf.tolist())}
    order = rng.permutation(len(numbers))
    solution = {f"{numbers[i]:016x}": ([] if i % 3 == 0 else [int(truth[i])]) for i in order.tolist()}
    return predictions, solution


def best_time(fn, repeats: int):
    "(best CPU seconds of this process, last result) over `repeats` calls: CPU time, since the machine may be shared."
    best, out = float('inf'), None
    for _ in range(repeats):
        start = time.process_time()
        out = fn()
        best = min(best, time.process_time() - start)
    return best, out


def breakdown(predictions, solution, repeats: int) -> dict[str, float]:
    "Seconds (best of `repeats`) of each step of `gap`, in the order `_gap_arrays` and `gap` run them."
    t = {}
    def step(name, fn):
        t[name], out = best_time(fn, repeats)
        return out
    lens = step('solution truth lists -> arrays', lambda: np.fromiter(map(len, solution.values()), np.int64, len(solution)))
    t['solution truth lists -> arrays'] += best_time(lambda: np.fromiter(
        itertools.chain.from_iterable(solution.values()), np.int64, int(lens.sum())), repeats)[0]
    step('prediction values -> arrays', lambda: np.fromiter(predictions.values(), _PRED_DTYPE, len(predictions)))
    step('ids -> string arrays', lambda: (_ids(predictions), _ids(solution)))
    step('ids -> hashes', lambda: (np.fromiter(map(hash, predictions), np.int64, len(predictions)),
                                   np.fromiter(map(hash, solution), np.int64, len(solution))))
    ids, conf, correct, m = _gap_arrays(predictions, solution)
    t['join on hashes, right/wrong'] = best_time(lambda: _gap_arrays(predictions, solution), repeats)[0] - sum(t.values())
    order = step('sort by confidence', lambda: np.argsort(-conf))
    order = step('tie-break', lambda: _break_ties(order, conf, correct, ids))
    step('precision sum', lambda: _precision_sum(correct[order]) / m)
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=1_000_000)
    ap.add_argument('--repeats', type=int, default=3)
    args = ap.parse_args()
    cases = {'distinct confidences': None, 'confidences rounded to 3 decimals': 3}
    print(f"n = {args.n:,} predictions; best of {args.repeats}; Python {platform.python_version()}, numpy {np.__version__}\n")
    print("| case | gap_reference (CPU s) | gap (CPU s) | speed-up | abs. difference |")
    print("|---|---|---|---|---|")
    steps = {}
    for name, decimals in cases.items():
        predictions, solution = make_case(args.n, decimals)
        t_ref, ref = best_time(lambda: gap_reference(predictions, solution), max(1, args.repeats - 1))
        t_fast, fast = best_time(lambda: gap(predictions, solution), args.repeats)
        diff = abs(fast - ref)
        assert diff <= 1e-12, f"gap {fast!r} != gap_reference {ref!r}"
        print(f"| {name} | {t_ref:.3f} | {t_fast:.3f} | {t_ref / t_fast:.1f}x | {diff:.1e} |")
        steps[name] = breakdown(predictions, solution, args.repeats)
    print("\nWhere `gap`'s time goes (CPU ms):\n")
    print("| step | " + " | ".join(steps) + " |")
    print("|---|" + "---|" * len(steps))
    for step in next(iter(steps.values())):
        print(f"| {step} | " + " | ".join(f"{s[step] * 1e3:.1f}" for s in steps.values()) + " |")


if __name__ == '__main__':
    main()
