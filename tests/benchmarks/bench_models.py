"""Forward throughput of lmkkit models on this CPU: images/s, default vs channels_last, and the share of the time
spent in pooling + neck (goal: under 3%). Random weights, torch.inference_mode.

Run: python tests/benchmarks/bench_models.py [--iters N] [--batch B]

Wall-clock images/s depend on what else runs on the machine; the process CPU seconds per image and the
pool+neck share (a ratio of CPU times) are stable under contention and are the numbers to compare."""
import argparse
import copy
import os
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import torch

from lmkkit.model import create_model

CASES = [('swin_base_patch4_window12_384', 224), ('legacy_seresnet101', 224), ('dm_nfnet_f0', 224),
         ('eca_nfnet_l1', 224), ('nfnet_l0', 224),
         ('test_resnet', 128), ('test_vit', 128), ('test_efficientnet', 128)]


def _clock(fn, iters):
    "Median (wall s, process CPU s) per call of `fn` over `iters` calls."
    walls, cpus = [], []
    for _ in range(iters):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w); cpus.append(time.process_time() - c)
    return sorted(walls)[len(walls) // 2], sorted(cpus)[len(cpus) // 2]


def bench(name, size, batch, iters):
    model = create_model(name, embedding_size=512).eval()
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x); fast(xc)                                     # warm-up
        default, channels_last = [], []
        for _ in range(iters):                                 # interleaved, so that both see the same load
            default.append(_clock(lambda: model(x), 1)); channels_last.append(_clock(lambda: fast(xc), 1))
        feats = model.features(x)
        tail = _clock(lambda: model.neck(model.pool(feats)), 20)
    med = lambda rows, i: sorted(r[i] for r in rows)[len(rows) // 2]
    return dict(map='x'.join(map(str, feats.shape[1:])), wall=med(default, 0), cpu=med(default, 1),
                wall_cl=med(channels_last, 0), cpu_cl=med(channels_last, 1), tail_cpu=tail[1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--iters', type=int, default=2)
    ap.add_argument('--batch', type=int, default=4)
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.iters} timed "
          f"iteration(s) after a warm-up; R-GeM (3 levels) + 512-d neck; random init; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print('| backbone | px | feature map | img/s default | img/s channels_last | CPU s/img default | '
          'CPU s/img channels_last | channels_last speed-up (CPU) | pool+neck share |')
    print('|---|---|---|---|---|---|---|---|---|')
    b = args.batch
    for name, size in CASES:
        r = bench(name, size, b, args.iters)
        print(f"| {name} | {size} | {r['map']} | {b / r['wall']:.2f} | {b / r['wall_cl']:.2f} | {r['cpu'] / b:.3f} | "
              f"{r['cpu_cl'] / b:.3f} | {r['cpu'] / r['cpu_cl']:.2f} | {100 * r['tail_cpu'] / r['cpu']:.2f}% |", flush=True)


if __name__ == '__main__':
    main()
