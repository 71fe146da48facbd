"""Benchmark JPEG decoding for extraction: the CPU path (PIL draft decode + resize + normalise, what each DataLoader worker
does) against the torchvision batch path of `decode='gpu'` (workers read bytes; the main process decodes a batch and resizes
it on the device), in images/s and CPU ms per image, with ratios measured in the same run.

Run: python tests/benchmarks/bench_decode.py [--device auto|cpu|cuda] [--size 224] [--batch 32] [--n 256] [--repeat 3]
                                              [--images DIR]
Images: every .jpg under --images, else the real photos in ../shared/real-photos (19 JPEGs, 640-1083 px), else 16
photo-like 1024x768 JPEGs written to a temporary folder; cycled to --n.
On a CPU the torchvision path runs libjpeg-turbo in the main process (the code path of the GPU, not its speed); on CUDA
it runs nvJPEG. Wall-clock rates depend on what else runs on the machine (the load average is printed); CPU ms per image
(process time) is steadier under contention.
"""
import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

import numpy as np
import torch
import torchvision

from lmkkit.data import IMAGENET_STD, ImageDataset, eval_transforms
from lmkkit.embed import EncodedImages, collate_lists, decode_batch, decode_jpegs, resolve_decode
from PIL import Image
from tests.benchmarks.bench_load_image import _photo
from tests.test_verify import real_photos


def _clock(fn, repeat: int) -> tuple[float, float]:
    "Median (wall s, process CPU s) of `repeat` calls after one warm-up call."
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w); cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda': torch.cuda.synchronize(device)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='auto', help="'auto': cuda when available, else cpu")
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--n', type=int, default=256, help='images per timed pass (the photos cycled)')
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--images', type=Path, default=None, help='folder of .jpg files (default: ../shared/real-photos)')
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = a.images or real_photos()
        if root is None:  # no real photos here: photo-like JPEGs of GLDv2's usual size
            root = Path(tmp)
            photo = _photo(1024, 768)
            for i in range(16): Image.fromarray(np.roll(photo, 64 * i, 1)).save(root/f'{i}.jpg', quality=90)
        run(a, root)


def run(a, root: Path):
    device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu') if a.device == 'auto' else a.device)
    files = sorted(Path(root).rglob('*.jpg'))
    if not files: raise SystemExit(f"no .jpg files under {root}")
    if device.type == 'cuda': resolve_decode('gpu', str(device))  # ConfigError in one line where nvJPEG does not work
    paths = [files[i % len(files)] for i in range(a.n)]
    ds = ImageDataset(paths, transform=eval_transforms(a.size), load_size=a.size)
    enc = EncodedImages(ds)
    spans = [range(s, min(s + a.batch, a.n)) for s in range(0, a.n, a.batch)]
    read = lambda: [collate_lists([enc[i] for i in span]) for span in spans]  # what the workers do on the GPU path

    def cpu_path():
        for i in range(a.n): ds[i]

    batches = read()
    def decode_only():
        for b in batches: decode_jpegs([d for d in b['data'] if d is not None], device)
        _sync(device)

    def device_path():
        for b in batches: decode_batch(b, ds, device)
        _sync(device)

    rows = [('CPU: PIL draft decode + resize + normalise (one worker; baseline)', *_clock(cpu_path, a.repeat)),
            ('GPU path, workers: read bytes + JPEG header (one worker)', *_clock(read, a.repeat)),
            (f'GPU path, main process: torchvision decode only, on {device}', *_clock(decode_only, a.repeat)),
            (f'GPU path, main process: torchvision decode + resize + normalise on {device}', *_clock(device_path, a.repeat))]
    b0 = batches[0]
    dev = decode_batch(b0, ds, device)['image'].cpu()
    cpu = torch.stack([ds[i]['image'] for i in spans[0]])
    grey = ((dev - cpu) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255).abs().mean((1, 2, 3)).numpy()
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({os.cpu_count()} cores)'
    load = os.getloadavg()
    print(f"{a.n} images from {root} ({len(files)} files) -> {a.size}x{a.size}, batch {a.batch}, median of {a.repeat}; "
          f"device {name}; torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"mean |device path - CPU path| of the model input: {grey.mean():.2f} grey levels of 255 (max per image {grey.max():.2f})\n")
    base = rows[0][1]
    print('| step | images/s | CPU ms/image | wall time vs baseline |')
    print('|---|---:|---:|---:|')
    for label, wall, cpu_s in rows:
        print(f'| {label} | {a.n / wall:.0f} | {cpu_s / a.n * 1e3:.2f} | {wall / base:.2f} |')


if __name__ == '__main__':
    main()
