"""Benchmark `lmkkit.embed.embed_together` (an ensemble's members fed from one decode pass) against one `Embedder` run per
member, for ensembles of 2 and 3 tiny timm members at realistic input sizes, and the share of each member's own run
that decoding takes.

Run: python tests/benchmarks/bench_decode_once.py [--n 96] [--batch 16] [--workers 0] [--threads 1] [--repeat 3]
                                                   [--decode cpu|torchvision] [--device cpu] [--images DIR]
Images: every .jpg under --images, else --n photo-like 800x600 JPEGs (GLDv2's usual size, quality 90) written to a
temporary folder. Members: test_resnet at 224 px, test_efficientnet at 288 px, test_convnext at 384 px (timm's tiny
test models: their compute is far below a real backbone's, so the decode share here is an upper bound of a real
ensemble's on a CPU). Every timed run starts from an empty cache. A last table gives a worker's decode cost per input side up to the
seed's 736 px (draft mode stops helping once the side nears the photo's). With --workers 0 and --threads 1 decoding and the
models run one after the other in one process, so the wall time is their sum and the CPU time (process time) is
steady under a shared machine's load; the load average is printed at the start and the end.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

import numpy as np
import torch
from PIL import Image

from lmkkit.data import ImageDataset, eval_transforms
from lmkkit.embed import Embedder, decode_image, embed_together
from lmkkit.model import create_model, save_checkpoint
from tests.benchmarks.bench_decode import _clock
from tests.benchmarks.bench_load_image import _photo

MEMBERS = (('test_resnet', 224), ('test_efficientnet', 288), ('test_convnext', 384))




def _load() -> str:
    return ' '.join(f'{v:.2f}' for v in os.getloadavg())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=96, help='images (the photos cycled when --images has fewer)')
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--workers', type=int, default=0, help='DataLoader workers (0: decoding in the main process)')
    ap.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--decode', default='cpu', help="'cpu' (PIL) or 'torchvision'")
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--images', type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.images: files = sorted(a.images.rglob('*.jpg'))
        else:
            photo = _photo(800, 600)
            files = []
            for i in range(min(a.n, 32)):
                files.append(tmp/f'{i}.jpg'); Image.fromarray(np.roll(photo, 24 * i, 1)).save(files[-1], quality=90)
        paths = [files[i % len(files)] for i in range(a.n)]
        ids = [f'{i:016x}' for i in range(a.n)]
        run(a, tmp, ids, paths, files)


def run(a, tmp: Path, ids, paths, files):
    start_load = _load()
    models = {}
    for name, _ in MEMBERS:
        torch.manual_seed(0)
        m = create_model(name, embedding_size=64, n_classes=None)
        models[name] = (m, save_checkpoint(tmp/f'{name}.pth', m, None))
    fresh = iter(range(10 ** 6))
    def members(k: int) -> list[Embedder]:  # each with an empty cache
        d = tmp/f'cache{next(fresh)}'
        return [Embedder(models[n][0], models[n][1], d, size, a.device, batch_size=a.batch, num_workers=a.workers, decode=a.decode)
                for n, size in MEMBERS[:k]]

    # the decode share of each member's own run: its loader alone (decode, resize, normalise) against the whole run
    print(f"{a.n} images ({len(files)} files, {Image.open(files[0]).size[0]}x{Image.open(files[0]).size[1]}), batch {a.batch}, "
          f"{a.workers} workers, {a.threads} torch threads, decode={a.decode}, device {a.device}, median of {a.repeat}; "
          f"load average at start {start_load} ({os.cpu_count()} CPUs)\n")
    print('| member | own run s | its loader alone s | decode share (CPU) | own run CPU s | loader CPU s |')
    print('|---|---:|---:|---:|---:|---:|')
    own = {}
    for k, (name, size) in enumerate(MEMBERS):
        ds = ImageDataset(paths, transform=eval_transforms(size), load_size=size)
        loader = _clock(lambda: [ds[i] for i in range(len(ds))], a.repeat)
        own[name] = _clock(lambda: members(k + 1)[k](ids, paths), a.repeat)
        print(f'| {name} at {size} px | {own[name][0]:.2f} | {loader[0]:.2f} | {loader[1] / own[name][1]:.0%} | '
              f'{own[name][1]:.2f} | {loader[1]:.2f} |')
    shared = _clock(lambda: [decode_image(p, MEMBERS[-1][1]) for p in paths], a.repeat)
    print(f'\none decode for every member (`decode_image`, draft for {MEMBERS[-1][1]} px, not resized): {shared[0]:.2f} s wall, '
          f'{shared[1]:.2f} s CPU\n')
    print('| input side (px) | a worker\'s CPU ms/image: decode + resize + normalise | of which `decode_image` alone | images/s per core |')
    print('|---:|---:|---:|---:|')
    item, dec = {}, {}
    for size in (224, 288, 384, 512, 736):
        ds = ImageDataset(files, transform=eval_transforms(size), load_size=size)
        item[size] = _clock(lambda: [ds[i] for i in range(len(ds))], a.repeat)[1] / len(files)
        dec[size] = _clock(lambda: [decode_image(p, size) for p in files], a.repeat)[1] / len(files)
        print(f'| {size} | {item[size] * 1e3:.2f} | {dec[size] * 1e3:.2f} | {1 / item[size]:.0f} |')
    print('\nWhole runs here (the models on this CPU too), and the workers\' share alone (what the CPU cores do when the '
          'models run on a GPU: N x decode + resize + normalise, against one `decode_image` at the largest size):\n')
    print('| ensemble | N separate runs s | embed_together s | ratio | separate CPU s | together CPU s | CPU ratio | '
          'workers\' CPU ms/image: separate | together | ratio |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    for k in (2, 3):
        sep = [sum(own[n][j] for n, _ in MEMBERS[:k]) for j in (0, 1)]
        tog = _clock(lambda: embed_together(members(k), ids, paths), a.repeat)
        w_sep, w_tog = sum(item[s] for _, s in MEMBERS[:k]), dec[max(s for _, s in MEMBERS[:k])]
        print(f"| {' + '.join(f'{n[5:]}@{s}' for n, s in MEMBERS[:k])} | {sep[0]:.2f} | {tog[0]:.2f} | {tog[0] / sep[0]:.2f} | "
              f'{sep[1]:.2f} | {tog[1]:.2f} | {tog[1] / sep[1]:.2f} | {w_sep * 1e3:.2f} | {w_tog * 1e3:.2f} | {w_tog / w_sep:.2f} |')
    full = 3 * item[736], dec[736]
    print(f'\nthree members at the seed\'s 736 px: workers\' CPU {full[0] * 1e3:.1f} ms/image separately, {full[1] * 1e3:.1f} together '
          f'({full[1] / full[0]:.2f}); on 4 cores {4 / full[0]:.0f} vs {4 / full[1]:.0f} ensemble images/s')
    print(f'\nload average at the end {_load()}')


if __name__ == '__main__':
    main()
