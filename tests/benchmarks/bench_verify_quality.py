"""Benchmark: which verification settings separate same-landmark pairs from unrelated ones, and at what cost.

Run: python tests/benchmarks/bench_verify_quality.py   (CPU, one thread; about 5 minutes on a busy 2-core machine).
Real photos: ../shared/real-photos (10 landmark photos: 45 same-landmark pairs; x 9 indoor frames: 90 unrelated pairs;
the 36 indoor-indoor pairs are frames of one office scene: reported apart, not used in the AUC). Synthetic: 16 landmarks
of lmkkit.synth in 4 families (3 views each, view_strength 0.8, family_similarity 0.9, 192 px as in `lmkkit synth`) and
12 non-landmarks: 48 same-landmark pairs, 200 random other pairs. Prints a markdown table with CPU ms/pair on one
thread (process time, so that other jobs on the machine inflate it little; a whole pair:
2 x (decode at max_side + features) + matching + RANSAC), its ratio to the old default measured in the same run, and
the `verify` stage's cost per query at top 10 (the query's features + 10 candidates' + 10 matches, no feature reuse).
"""
import itertools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
for _var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ[_var] = '1'  # one thread, numpy included
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cv2
import numpy as np

from lmkkit.data import load_image
from lmkkit.synth import draw_nonlandmark, draw_scene, family_style, landmark_style, render_view
from lmkkit.verify import PairResult, SiftMagsac, prepare_image
from tests.test_verify import real_photos, roc_auc


class OldSiftMagsac(SiftMagsac):
    "The verifier before issue 13: one-sided ratio test (0.8), raw MAGSAC++ homography inliers, 256 px, no minimum."
    def __init__(self): super().__init__(max_side=256, ratio=0.8, model='homography')

    def match(self, fa, fb):
        (pa, da), (pb, db) = fa, fb
        if da is None or db is None or len(db) < 2: return PairResult(0, 0)
        ms = [m[0] for m in cv2.BFMatcher().knnMatch(da, db, k=2) if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
        if len(ms) < 4: return PairResult(0, len(ms))
        src, dst = pa[[m.queryIdx for m in ms]], pb[[m.trainIdx for m in ms]]
        _, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, 4.0, maxIters=2000, confidence=0.999)
        return PairResult(0 if mask is None else int(mask.sum()), len(ms))


SETTINGS = {  # name -> verifier
    'old default: ratio 0.8 one-sided, H raw, 256 px': OldSiftMagsac(),
    'mutual, F, 256 px': SiftMagsac(max_side=256),
    'mutual, F, 320 px (new default)': SiftMagsac(),
    'mutual, F, 384 px': SiftMagsac(max_side=384),
    'mutual, F, 512 px': SiftMagsac(max_side=512),
    'mutual, F, 512 px, 2000 kp': SiftMagsac(max_side=512, n_features=2000),
    'mutual, F, 640 px, 2000 kp': SiftMagsac(max_side=640, n_features=2000),
    'mutual, F, 320 px, ratio 0.8': SiftMagsac(ratio=0.8),
    'mutual, H, 320 px': SiftMagsac(model='homography'),
}


def synthetic_set(families=4, per_family=4, views=3, size=192):
    "Images and (same, other) pairs of synthetic landmarks and non-landmarks."
    imgs, labels = [], []
    for f in range(families):
        fam = family_style(np.random.default_rng(100 + f))
        for k in range(per_family):
            rng = np.random.default_rng(1000 + 10 * f + k)
            scene = draw_scene(landmark_style(fam, rng, 0.9), rng, 2 * size)
            for _ in range(views): imgs.append(render_view(scene, rng, size, 0.8)); labels.append(f * per_family + k)
    for k in range(12): imgs.append(draw_nonlandmark(np.random.default_rng(5000 + k), size, 0.8)); labels.append(-1 - k)
    pairs = list(itertools.combinations(range(len(imgs)), 2))
    same = [(i, j) for i, j in pairs if labels[i] == labels[j]]
    other = [(i, j) for i, j in pairs if labels[i] != labels[j]]
    return imgs, same, [other[k] for k in np.random.default_rng(0).choice(len(other), 200, replace=False)]


def scores(v, images, pairs):
    "Inliers of each pair; ms per whole pair (2 x extraction from `images`' loader + match); ms per query of the stage."
    t0 = time.process_time(); feats = [v.extract(load()) for load in images]; t_ext = (time.process_time() - t0) / len(images)
    t0 = time.process_time(); res = {p: v.match(feats[p[0]], feats[p[1]]).inliers for p in pairs}
    t_match = (time.process_time() - t0) / len(pairs)
    return res, 1000 * (2 * t_ext + t_match), 1000 * (11 * t_ext + 10 * t_match)  # top 10: the query + 10 new candidates


def main():
    cv2.setNumThreads(1)
    root = real_photos()
    if root is None: sys.exit("real photos not found: ../shared/real-photos beside the repository")
    paths = sorted((root/'landmark').glob('*.jpg')) + sorted((root/'indoor').glob('*.jpg'))
    same = list(itertools.combinations(range(10), 2))
    unrelated = [(i, 10 + j) for i in range(10) for j in range(9)]
    office = [(10 + i, 10 + j) for i, j in itertools.combinations(range(9), 2)]
    syn, s_same, s_other = synthetic_set()
    print(f"load before: {open('/proc/loadavg').read().strip()}")
    print("\n| setting | real AUC | real ms/pair | vs old | s/query (top 10) | same median | unrelated max | office median "
          "| synth AUC | synth ms/pair |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = None
    for name, v in SETTINGS.items():
        r, ms, per_query = scores(v, [lambda p=p: load_image(p, v.max_side) for p in paths], same + unrelated + office)
        s, s_ms, _ = scores(v, [lambda im=im: prepare_image(im, v.max_side) for im in syn], s_same + s_other)
        base = base or ms
        print(f"| {name} | {roc_auc([r[p] for p in same], [r[p] for p in unrelated]):.3f} | {ms:.0f} | {ms / base:.1f}x | {per_query / 1000:.2f} "
              f"| {np.median([r[p] for p in same]):.0f} | {max(r[p] for p in unrelated)} | {np.median([r[p] for p in office]):.0f} "
              f"| {roc_auc([s[p] for p in s_same], [s[p] for p in s_other]):.3f} | {s_ms:.0f} |", flush=True)
    print(f"\nload after: {open('/proc/loadavg').read().strip()}")


if __name__ == '__main__':
    main()
