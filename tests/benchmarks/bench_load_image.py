"""Benchmark lmkkit.data.load_image: JPEG draft-mode decode vs full decode + resize, for a 256 px target.

Run: python tests/benchmarks/bench_load_image.py [--width 1600] [--height 1200] [--size 256] [--repeat 30]
Writes a photo-like 1600x1200 JPEG (quality 90) to a temporary folder, then times, per load (median of
`repeat`): the full decode with PIL + bilinear resize (the baseline), load_image(path, size) (draft mode),
and load_image(path) (full decode, no resize). Prints a markdown table with ratios against the baseline.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lmkkit.data import _target_size, load_image


def _photo(w: int, h: int) -> np.ndarray:
    "A smooth image with edges and texture, compressible like a photo."
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 255, (h // 40, w // 40, 3), np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(200):
        p = tuple(int(v) for v in rng.uniform(0, 1, 2) * (w, h))
        cv2.circle(img, p, int(rng.integers(5, 80)), tuple(int(c) for c in rng.integers(0, 255, 3)), -1, cv2.LINE_AA)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def _full_then_resize(path: Path, size: int) -> np.ndarray:
    "Baseline: decode every pixel, convert to RGB, resize the longer side to `size`."
    with Image.open(path) as img:
        img = img.convert('RGB')
        return np.asarray(img.resize(_target_size(*img.size, size), Image.Resampling.BILINEAR))


def _time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--width', type=int, default=1600)
    ap.add_argument('--height', type=int, default=1200)
    ap.add_argument('--size', type=int, default=256)
    ap.add_argument('--repeat', type=int, default=30)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d)/'photo.jpg'
        Image.fromarray(_photo(a.width, a.height)).save(path, quality=90)
        base_img, draft_img = _full_then_resize(path, a.size), load_image(path, a.size)
        assert base_img.shape == draft_img.shape, (base_img.shape, draft_img.shape)
        diff = np.abs(base_img.astype(int) - draft_img.astype(int)).mean()
        rows = [('full decode + resize (baseline)', _time(lambda: _full_then_resize(path, a.size), a.repeat)),
                (f'load_image(size={a.size}) (draft mode)', _time(lambda: load_image(path, a.size), a.repeat)),
                ('load_image() (full decode, no resize)', _time(lambda: load_image(path), a.repeat))]
    base = rows[0][1]
    print(f'{a.width}x{a.height} JPEG (q=90) -> longer side {a.size}; median of {a.repeat}; '
          f'mean |draft - baseline| = {diff:.2f} grey levels\n')
    print('| method | ms per image | ratio vs baseline |')
    print('|---|---:|---:|')
    for name, t in rows: print(f'| {name} | {t * 1e3:.2f} | {t / base:.2f} |')


if __name__ == '__main__':
    main()
