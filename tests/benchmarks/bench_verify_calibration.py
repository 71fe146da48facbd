"""Benchmark: each verifier on the real photos, in its own units, to calibrate it (issue 24).

Run: python tests/benchmarks/bench_verify_calibration.py [out.json] [verifier,verifier,...]   (CPU, 2 threads; needs ../shared/real-photos and
../shared/weights; about 10 minutes on a busy 2-core machine). For each verifier: features of the 19 photos, tentative
matches of the 45 same-landmark and 90 unrelated pairs, then the inliers under several geometric models and thresholds
(the matches are made once; only MAGSAC++ reruns). Prints per verifier and geometry: ROC AUC, the worst unrelated pair,
the median same-landmark pair, and CPU ms per whole pair (2 extractions + matching + RANSAC; process time over 2 threads,
so that other jobs inflate it little) with its ratio to SIFT measured in the same run. The machine's load is printed too.
"""
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
THREADS = int(os.environ.get('BENCH_THREADS', '2'))  # 1 on an oversubscribed machine: idle OpenMP threads spin and count as CPU
for _var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ[_var] = str(THREADS)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cv2
import numpy as np
import torch

from lmkkit.data import load_image
from lmkkit.verify import VERIFIERS, count_inliers
from tests.test_verify import real_photos, roc_auc

WEIGHTS = Path(__file__).resolve().parents[3] / 'shared' / 'weights'
GEOMETRIES = [('fundamental', 4.0), ('fundamental', 2.0), ('fundamental', 1.0), ('homography', 4.0), ('homography', 8.0)]


def learned(name: str) -> dict:
    "The keyword arguments giving verifier `name` its published files."
    return {k: WEIGHTS / f for k, f in VERIFIERS.get(name).files.items()}


def correspondences(v, paths, pairs):
    "Tentative matches of each pair, and CPU seconds per extraction and per matching."
    t0 = time.process_time()
    feats = [v.extract(load_image(p, v.max_side)) for p in paths]
    t_ext = (time.process_time() - t0) / len(paths)
    t0 = time.process_time()
    found = {p: v.correspond(feats[p[0]], feats[p[1]]) for p in pairs}
    return found, t_ext, (time.process_time() - t0) / len(pairs)


def main(out: str | None = None, names: str = 'sift_magsac,xfeat_mnn,xfeat_lighterglue,aliked_lightglue,disk_lightglue'):
    torch.set_num_threads(THREADS); cv2.setNumThreads(THREADS)
    root = real_photos()
    if root is None or not WEIGHTS.is_dir(): sys.exit("needs ../shared/real-photos and ../shared/weights")
    paths = sorted((root/'landmark').glob('*.jpg')) + sorted((root/'indoor').glob('*.jpg'))
    same = list(itertools.combinations(range(10), 2))
    unrelated = [(i, 10 + j) for i in range(10) for j in range(9)]
    print(f"threads {THREADS}; load before: {open('/proc/loadavg').read().strip()}", flush=True)
    rows, base = [], None
    for name in names.split(','):  # SIFT first: the ratios are against the first verifier
        v = VERIFIERS.create(name, **({} if name == 'sift_magsac' else learned(name)), min_inliers=9)
        found, t_ext, t_match = correspondences(v, paths, same + unrelated)
        for model, thr in GEOMETRIES:
            t0 = time.process_time()
            inl = {p: count_inliers(*found[p], model, thr, 9).inliers for p in found}  # raw counts (9: the least F allows)
            t_geo = (time.process_time() - t0) / len(found)
            ms = 1000 * (2 * t_ext + t_match + t_geo)
            base = base or ms
            row = dict(verifier=name, max_side=v.max_side, model=model, threshold=thr, ms_per_pair=round(ms, 1),
                       vs_sift=round(ms / base, 2), extract_ms=round(1000 * t_ext, 1), match_ms=round(1000 * t_match, 1),
                       auc=round(roc_auc([inl[p] for p in same], [inl[p] for p in unrelated]), 4),
                       same=sorted(inl[p] for p in same), unrelated=sorted(inl[p] for p in unrelated),
                       matches_same_median=float(np.median([len(found[p][0]) for p in same])),
                       matches_unrelated_max=max(len(found[p][0]) for p in unrelated))
            rows.append(row)
            print(f"| {name} | {model[0].upper()} {thr:g} px | {row['auc']:.3f} | {max(row['unrelated'])} | "
                  f"{np.median(row['same']):.0f} | {ms:.0f} | {row['vs_sift']:.1f}x |", flush=True)
        if out: Path(out).write_text(json.dumps(rows))  # after each verifier: a slow one leaves the others' rows
    print(f"load after: {open('/proc/loadavg').read().strip()}")


if __name__ == '__main__':
    main(*sys.argv[1:])
