"""Benchmark: pairwise verification (OpenCV SIFT + MAGSAC++ vs kornia SIFTFeature + RANSAC) and embedding extraction.

Run: python tests/benchmarks/bench_verify.py   (CPU; about 2-3 minutes on 2 cores). Prints markdown tables with
ratios against the baseline measured in the same run (OpenCV at 256 px on one thread; extraction with num_workers=0).
Which settings separate same-landmark pairs from unrelated ones (ROC AUC, real photos and synthetic): bench_verify_quality.py.
"""
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

import cv2
import numpy as np
import torch

from lmkkit.search import Candidates
from lmkkit.synth import draw_scene, family_style, render_view
from lmkkit.verify import SiftMagsac, prepare_image, verify_candidates


def views(seed, n=2, size=640, strength=0.3):
    "`n` photos (RGB uint8) of one synthetic landmark from lmkkit.synth, from different viewpoints."
    rng = np.random.default_rng(seed)
    scene = draw_scene(family_style(rng), rng, 2 * size)
    return [render_view(scene, rng, size, strength) for _ in range(n)]


class KorniaSift:
    "kornia SIFTFeature + DescriptorMatcher('snn', 0.8) + kornia RANSAC homography, for comparison."
    def __init__(self, max_side, n_features=1000, threshold=4.0):
        import kornia.feature as KF
        from kornia.geometry.ransac import RANSAC
        self.max_side = max_side
        self.sift, self.matcher = KF.SIFTFeature(num_features=n_features), KF.DescriptorMatcher('snn', 0.8)
        self.ransac = RANSAC('homography', inl_th=threshold, seed=0)

    @torch.inference_mode()
    def verify_pair(self, a, b):
        feats = []
        for img in (a, b):
            g = cv2.cvtColor(prepare_image(img, self.max_side), cv2.COLOR_RGB2GRAY)
            lafs, _, desc = self.sift(torch.from_numpy(g).float()[None, None] / 255)
            feats.append((lafs[0, :, :, 2], desc[0]))
        _, idx = self.matcher(feats[0][1], feats[1][1])
        if len(idx) < 4: return 0, len(idx)
        _, mask = self.ransac(feats[0][0][idx[:, 0]], feats[1][0][idx[:, 1]])
        return int(mask.sum()), len(idx)


def pairs_per_s(verifier, pairs, reps):
    verifier.verify_pair(*pairs[0])  # warm-up
    t0, n = time.perf_counter(), 0
    while n < reps:
        for a, b in pairs:
            verifier.verify_pair(a, b); n += 1
    return n / (time.perf_counter() - t0)


def main():
    landmarks = [views(s, n=6) for s in range(4)]
    pairs = [(photos[0], photos[1]) for photos in landmarks] + [(landmarks[0][0], landmarks[1][0])]
    rows, base = [], None
    for threads in (1, 2):
        cv2.setNumThreads(threads); torch.set_num_threads(threads)
        for side in (256, 512):
            for name, v, reps in (('OpenCV SIFT + MAGSAC++', SiftMagsac(max_side=side), 20),
                                  ('kornia SIFTFeature + RANSAC', KorniaSift(side), 3 if threads == 1 else 2)):
                r = pairs_per_s(v, pairs, reps)
                base = base or r
                rows.append((name, side, threads, r, r / base))
    same = SiftMagsac(max_side=256).verify_pair(*pairs[0]); diff = SiftMagsac(max_side=256).verify_pair(*pairs[-1])
    ks, kd = KorniaSift(256).verify_pair(*pairs[0]), KorniaSift(256).verify_pair(*pairs[-1])
    print("\n## Pair verification (whole pair: resize, 2 x features, match, RANSAC)\n")
    print("| method | max_side | threads | pairs/s | ms/pair | vs OpenCV 256px 1 thread |\n|---|---|---|---|---|---|")
    for name, side, th, r, ratio in rows: print(f"| {name} | {side} | {th} | {r:.1f} | {1000 / r:.1f} | {ratio:.2f}x |")
    print(f"\nInliers (same scene / unrelated) at 256 px: OpenCV {same.inliers}/{diff.inliers}, kornia {ks[0]}/{kd[0]}")

    # The whole verification cost per query at the default settings: JPEGs on disk, top 10, features cached per query.
    cv2.setNumThreads(1); torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rng = np.random.default_rng(0)
        for i in range(24):
            img = landmarks[i % 4][i // 4]
            cv2.imwrite(str(d/f'{i}.jpg'), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        q = 12
        cands = Candidates([str(i) for i in range(q)], [[str(x) for x in rng.choice(24, 10, replace=False)] for _ in range(q)],
                           np.zeros((q, 10), np.float32))
        for cache_size, label in ((1, 'features of the query only'), (32, 'LRU of 32 images (default)')):
            t0 = time.perf_counter()
            verify_candidates(cands, lambda i: d/f'{i}.jpg', top_n=10, feature_cache=cache_size)
            per_q = (time.perf_counter() - t0) / q
            print(f"\nWhole `verify` per query (top 10, 640 px JPEGs read at the default {SiftMagsac().max_side} px, 1 thread, {label}): "
                  f"{per_q * 1000:.0f} ms -> {3600 / per_q:,.0f} queries/hour")

    # Extraction: test_resnet at 128 px, num_workers 0 vs 2.
    from lmkkit.embed import extract_embeddings
    from lmkkit.model import create_model
    torch.set_num_threads(2)
    model = create_model('test_resnet', embedding_size=64, n_classes=None)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i in range(128):
            p = Path(d)/f'{i}.jpg'
            cv2.imwrite(str(p), cv2.resize(landmarks[i % 4][i % 6], (400, 300))); paths.append(p)
        res = []
        for w in (0, 2):
            extract_embeddings(model, paths[:16], 128, batch_size=16, num_workers=w, verbose=False)
            t0 = time.perf_counter()
            extract_embeddings(model, paths, 128, batch_size=32, num_workers=w, verbose=False)
            res.append((w, len(paths) / (time.perf_counter() - t0)))
    print("\n## Extraction (test_resnet, 128 px, 400x300 JPEGs, batch 32, torch 2 threads, CPU)\n")
    print("| num_workers | images/s | vs num_workers=0 |\n|---|---|---|")
    for w, r in res: print(f"| {w} | {r:.0f} | {r / res[0][1]:.2f}x |")


if __name__ == '__main__':
    main()
