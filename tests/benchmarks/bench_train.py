"""Benchmark of lmkkit.train (not a test): run `python tests/benchmarks/bench_train.py [--part cpu|flops|gpu|all]`.

cpu   -- images/s of the demo preset with num_workers 0 vs 2 and the share of step time spent waiting for data.
flops -- forward FLOPs per image of the seed's backbones at each stage size (torch FlopCounterMode, batch 1), and
         the GPU-hours of the seed recipe on GLDv2-clean (1,580,470 images) at stated throughputs.
gpu   -- (on a CUDA machine) measured training images/s of each seed backbone at each size (bf16, channels_last,
         AdamW, CurricularFace over 81,313 classes), and an end-to-end demo run with AMP, a time-budget stop and a resume.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd
import torch

SEED_BACKBONES = ('swin_base_patch4_window12_384', 'legacy_seresnet101', 'dm_nfnet_f0')
GLDV2_CLEAN = 1_580_470
CLASSES = 81_313
PEAKS = {'A100 bf16 (312 TFLOP/s) at 40%': 312e12 * 0.40, 'P100 fp16 (18.7 TFLOP/s) at 30%': 18.7e12 * 0.30}


def table(rows: list[dict]) -> str:
    "A markdown table of `rows`."
    cols = list(rows[0])
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    return '\n'.join(lines + ['| ' + ' | '.join(str(r[c]) for c in cols) + ' |' for r in rows])


def bench_cpu(tmp: Path, repeats: int = 2) -> None:
    "Demo preset, one 64 px epoch on 320 synthetic images: loader workers 0 vs 2, torch threads default vs 1 (best of `repeats`)."
    from lmkkit.core import make_config
    from lmkkit.synth import make_synthetic
    from lmkkit.train import PRESETS, TrainConfig, train
    make_synthetic(tmp/'gld', seed=0, verbose=False)
    best, default_threads = {}, torch.get_num_threads()
    for r in range(repeats):
        for threads in (default_threads, 1):
            torch.set_num_threads(threads)
            for workers in (0, 2):
                cfg = make_config(TrainConfig, base=PRESETS['demo'], stages=((64, 1),), num_workers=workers,
                                  val_every_epochs=0, log_every_steps=10**6, max_images=320)
                out = tmp/f'w{workers}t{threads}r{r}'
                train(tmp/'gld', out, cfg, device='cpu', verbose=False)
                last = pd.read_csv(out/'metrics.csv').iloc[-1]
                key = (threads, workers)
                if key not in best or last['images_per_s'] > best[key]['images_per_s']: best[key] = last
    base = best[default_threads, 0]['images_per_s']
    rows = [{'torch threads': t, 'num_workers': w, 'images/s': f"{b['images_per_s']:.1f}",
             f'vs {default_threads} threads, 0 workers': f"{b['images_per_s'] / base:.2f}x",
             'data wait share of step time': f"{b['data_wait']:.0%}"} for (t, w), b in best.items()]
    print(f"\n## Demo preset, 64 px, batch 16, {os.cpu_count()} CPU cores, best of {repeats}\n\n{table(rows)}")


def forward_flops(name: str, size: int, device: str = 'cpu') -> float:
    "Forward FLOPs of `name`'s backbone (as lmkkit.model builds it) on one `size` x `size` image."
    from torch.utils.flop_counter import FlopCounterMode
    from lmkkit.model import create_backbone
    m = create_backbone(name, **(dict(img_size=size) if name.startswith('swin') else {})).to(device).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc: m.forward_features(torch.zeros(1, 3, size, size, device=device))
    return fc.get_total_flops()


def bench_flops(device: str = 'cpu', measured: dict | None = None) -> dict:
    "FLOPs per image and the recipe's GPU-hours at the PEAKS throughputs (training = 3 x forward)."
    from lmkkit.train import PRESETS
    stages = PRESETS['seed'].stages
    flops, rows, hours = {}, [], []
    for name in SEED_BACKBONES:
        for size, _ in stages:
            flops[name, size] = forward_flops(name, size, device)
            rows.append({'backbone': name, 'size': size, 'forward GFLOPs/image': f'{flops[name, size] / 1e9:.1f}',
                         'training GFLOPs/image (3x)': f'{3 * flops[name, size] / 1e9:.1f}'})
        total = sum(3 * flops[name, size] * GLDV2_CLEAN * epochs for size, epochs in stages)
        row = {'backbone': name, 'recipe PFLOPs': f'{total / 1e15:,.0f}'}
        for label, rate in PEAKS.items(): row[f'GPU-hours, {label}'] = f'{total / rate / 3600:,.0f}'
        if measured:
            secs = sum(GLDV2_CLEAN * epochs / measured[f'{name}@{size}'] for size, epochs in stages)
            row['GPU-hours at measured H200 images/s'] = f'{secs / 3600:,.0f}'
        hours.append(row)
    print(f"\n## Forward FLOPs per image (FlopCounterMode, batch 1)\n\n{table(rows)}")
    print(f"\n## The seed recipe {stages} on GLDv2-clean ({GLDV2_CLEAN:,} images)\n\n{table(hours)}")
    return {f'{k[0]}@{k[1]}': v for k, v in flops.items()}


def train_images_per_s(name: str, size: int, batch: int, steps: int = 6) -> float:
    "Training images/s of one backbone on random images (bf16 autocast, channels_last, AdamW, CurricularFace)."
    from lmkkit.model import create_model
    from lmkkit.embed import AMP_DTYPES, resolve_amp
    from lmkkit.train import TrainConfig, make_optimizer
    cfg = TrainConfig(backbone=name)
    kw = dict(backbone_kwargs=dict(img_size=size)) if name.startswith('swin') else {}  # older timm: no dynamic size for Swin
    model = create_model(name, n_classes=CLASSES, s=cfg.s, m=cfg.m, **kw).cuda().to(memory_format=torch.channels_last).train()
    opt, dtype = make_optimizer(model, cfg), AMP_DTYPES.get(resolve_amp('auto', 'cuda', training=True))
    x = torch.randn(batch, 3, size, size, device='cuda').contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (batch,), device='cuda')
    def step():
        with torch.autocast('cuda', dtype=dtype): logits = model(x, y)['logits']
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(2): step()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(steps): step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def bench_gpu(tmp: Path, out: Path, demo: bool = True) -> None:
    "Measured throughput on this GPU, FLOPs, and an end-to-end demo run with AMP, a budget stop and a resume."
    from lmkkit.core import Deadline, make_config
    from lmkkit.synth import make_synthetic
    from lmkkit.train import PRESETS, TrainConfig, train
    torch.backends.cudnn.benchmark = True
    print(torch.cuda.get_device_name(), 'bf16' if torch.cuda.is_bf16_supported() else 'fp16')
    make_synthetic(tmp/'gld', seed=0, verbose=False)
    results = {}
    for amp in (('auto', 'fp16') if demo else ()):
        cfg = make_config(TrainConfig, base=PRESETS['demo'], amp=amp, num_workers=4)
        ticks = iter(range(10**6))
        first = train(tmp/'gld', tmp/amp, cfg, deadline=Deadline(30, start=0, clock=lambda: float(next(ticks))), verbose=False)
        done = train(tmp/'gld', tmp/amp, cfg, verbose=False)
        m = pd.read_csv(tmp/amp/'metrics.csv')
        results[f'demo_{amp}'] = dict(stopped_at=first.step, finished=done.finished, steps=done.step, val_gap=done.val_gap,
                                      images_per_s=float(m['images_per_s'].iloc[-1]), loss_first=float(m['loss'].iloc[0]),
                                      loss_last=float(m['loss'].iloc[-1]))
        print(amp, results[f'demo_{amp}'], flush=True)
    measured = {}
    for name in SEED_BACKBONES:
        for size, _ in PRESETS['seed'].stages:
            try: measured[f'{name}@{size}'] = train_images_per_s(name, size, batch=32)
            except torch.cuda.OutOfMemoryError: measured[f'{name}@{size}'] = float('nan')
            torch.cuda.empty_cache()
            print(name, size, f"{measured[f'{name}@{size}']:.1f} images/s", flush=True)
    results['measured_images_per_s'] = measured
    results['forward_flops'] = bench_flops('cuda', measured)
    (out/'bench_train_gpu.json').write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--part', default='all', choices=['cpu', 'flops', 'gpu', 'all'])
    p.add_argument('--no-demo', action='store_true', help='gpu part: skip the end-to-end demo runs')
    p.add_argument('--out', default=os.environ.get('OUT', '.'))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if args.part in ('cpu', 'all'): bench_cpu(Path(d))
        if args.part in ('flops', 'all'): bench_flops()
        if args.part == 'gpu': bench_gpu(Path(d), Path(args.out), demo=not args.no_demo)
