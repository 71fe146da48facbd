"""The CUDA paths and GPU throughput, in one short run on a lent GPU machine (not part of the test suite).

    python tests/benchmarks/gpu_check.py --out DIR            # on a GPU machine
    python tests/benchmarks/gpu_check.py --out DIR --smoke    # the same code paths, tiny, on the CPU

Checks: AMP training (bf16, and fp16 with GradScaler) of the demo preset through `lmkkit.train.train`, a
checkpoint written on the GPU loading on the CPU, embedding extraction in bf16/fp16 against fp32, kNN with
the torch backend on the GPU against the CPU (and faiss-gpu when installed), kornia LoFTR and DISK+LightGlue
(random weights, the plumbing and the speed) on the GPU; and throughput of the seed backbones (training
step and inference, default vs channels_last). Every check is independent: a failure is recorded, the rest
runs. Writes DIR/gpu_check.json and prints a markdown table.
"""
import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

RESULTS: list[dict] = []
JSON_PATH: list[Path] = []  # set by main; rewritten after every row so a run cut short keeps what it measured


def record(check: str, **values):
    "Append one result row, echo it and save the rows so far."
    RESULTS.append(dict(check=check, **values))
    print(json.dumps(RESULTS[-1]), flush=True)
    if JSON_PATH: JSON_PATH[0].write_text(json.dumps(RESULTS, indent=1))


def guarded(fn):
    "Run one check; a failure is recorded, never fatal."
    def run(*args, **kwargs):
        start = time.perf_counter()
        try: fn(*args, **kwargs)
        except Exception as e:
            record(fn.__name__, ok=False, error=f'{type(e).__name__}: {e}'[:400], trace=traceback.format_exc()[-1500:])
        print(f'-- {fn.__name__}: {time.perf_counter() - start:.1f}s', flush=True)
    return run


def sync(device):
    if device == 'cuda': torch.cuda.synchronize()


def timed(fn, device, warmup=2, iters=5) -> float:
    "Seconds per call of `fn` after warm-up."
    for _ in range(warmup): fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters): fn()
    sync(device)
    return (time.perf_counter() - start) / iters


@guarded
def check_training(data, work, device, smoke):
    from lmkkit.train import PRESETS, train
    from lmkkit.model import load_checkpoint
    for amp in ('bf16', 'fp16'):
        cfg = dataclasses.replace(PRESETS['demo'], amp=amp, channels_last=True, num_workers=0 if smoke else 4,
                                  stages=((64, 1),) if smoke else ((96, 2), (128, 1)))
        start = time.perf_counter()
        res = train(data, work / f'train-{amp}', cfg, device=device, verbose=False)
        secs = time.perf_counter() - start
        model, class_ids, _ = load_checkpoint(work / f'train-{amp}' / 'model.pt', map_location='cpu')
        record('train_demo', amp=amp, ok=bool(res.finished), seconds=round(secs, 1), val_gap=res.val_gap,
               steps=res.step, classes=len(class_ids or []), loads_on_cpu=True)


def backbone_batch(name, size, batch, device, channels_last):
    from lmkkit.model import create_model
    model = create_model(name, embedding_size=512, n_classes=1000).to(device)
    if channels_last: model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last: x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    return model, x, y


@guarded
def check_backbones(device, smoke):
    names = ['test_resnet'] if smoke else ['swin_base_patch4_window12_384', 'legacy_seresnet101', 'dm_nfnet_f0']
    size, batch = (64, 2) if smoke else (448, 32)
    dtype = torch.bfloat16 if device == 'cuda' else None
    for name in names:
        for cl in (False, True):
            model, x, y = backbone_batch(name, size, batch, device, cl)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            def step():
                with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                    loss = torch.nn.functional.cross_entropy(model(x, y)['logits'].float(), y)
                opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
            model.train(); train_s = timed(step, device, iters=3 if smoke else 10)
            model.eval()
            def infer():
                with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                    model(x)
            infer_s = timed(infer, device, iters=3 if smoke else 10)
            mem = torch.cuda.max_memory_allocated() / 2**30 if device == 'cuda' else None
            record('backbone', name=name, size=size, batch=batch, channels_last=cl, amp=str(dtype), ok=True,
                   train_img_s=round(batch / train_s, 1), infer_img_s=round(batch / infer_s, 1),
                   max_mem_gib=None if mem is None else round(mem, 1))
            del model, opt, x, y
            if device == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()


@guarded
def check_embed(data, device, smoke):
    from lmkkit.data import id_to_path, read_train_csv
    from lmkkit.embed import extract_embeddings
    from lmkkit.model import create_model
    ids = read_train_csv(data / 'train.csv').id.tolist()[:64 if smoke else 512]
    paths = [id_to_path(data, 'train', i) for i in ids]
    model = create_model('legacy_seresnet101' if not smoke else 'test_resnet', embedding_size=512, n_classes=None).to(device)
    base, _ = extract_embeddings(model, paths, 224 if not smoke else 64, batch_size=64, device=device, amp='off', verbose=False)
    for amp in (('bf16', 'fp16') if device == 'cuda' else ('off',)):
        for cl in (False, True):
            start = time.perf_counter()
            emb, ok = extract_embeddings(model, paths, 224 if not smoke else 64, batch_size=64, device=device, amp=amp,
                                         channels_last=cl, num_workers=0 if smoke else 4, verbose=False)
            secs = time.perf_counter() - start
            agree = float((emb * base).sum(1).min())
            record('embed', amp=amp, channels_last=cl, ok=bool(ok.all()) and agree > 0.99, images=len(paths),
                   img_s=round(len(paths) / secs, 1), min_cos_vs_fp32=round(agree, 5))


@guarded
def check_knn(device, smoke):
    from lmkkit.search import knn
    q, n, d = (200, 2000, 64) if smoke else (10000, 100000, 512)
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((q, d), dtype=np.float32); index = rng.standard_normal((n, d), dtype=np.float32)
    start = time.perf_counter(); s_cpu, i_cpu = knn(queries, index, 10, backend='torch', device='cpu'); cpu_s = time.perf_counter() - start
    knn(queries[:10], index, 10, backend='torch', device=device)
    start = time.perf_counter(); s_dev, i_dev = knn(queries, index, 10, backend='torch', device=device); dev_s = time.perf_counter() - start
    record('knn_torch', q=q, n=n, d=d, ok=bool((i_cpu[:, 0] == i_dev[:, 0]).mean() > 0.999), cpu_s=round(cpu_s, 3),
           device_s=round(dev_s, 3), speedup=round(cpu_s / dev_s, 1))
    try: import faiss
    except ImportError: return record('knn_faiss_gpu', ok=None, note='faiss not installed')
    if not hasattr(faiss, 'StandardGpuResources'): return record('knn_faiss_gpu', ok=None, note='faiss-cpu only')
    start = time.perf_counter(); s_f, i_f = knn(queries, index, 10, backend='faiss', device=device); f_s = time.perf_counter() - start
    record('knn_faiss_gpu', ok=bool((i_f[:, 0] == i_cpu[:, 0]).mean() > 0.999), seconds=round(f_s, 3))


def random_weights(work: Path):
    "Random LoFTR, DISK and LightGlue weight files (real ones cannot be downloaded here)."
    from kornia.feature import DISK, LightGlue, LoFTR
    torch.save({'state_dict': LoFTR(pretrained=None).state_dict()}, work / 'loftr.ckpt')
    torch.save({'extractor': DISK().state_dict()}, work / 'disk.pth')
    torch.save(LightGlue(features=None, input_dim=128).state_dict(), work / 'lightglue.pth')


@guarded
def check_local_features(data, work, device, smoke):
    from lmkkit.data import id_to_path, load_image, read_train_csv
    from lmkkit.verify import VERIFIERS
    random_weights(work)
    df = read_train_csv(data / 'train.csv')
    pairs = [(load_image(id_to_path(data, 'train', a)), load_image(id_to_path(data, 'train', b)))
             for a, b in zip(df.id[:8], df.id[8:16])]
    makers = {'sift_magsac': lambda side: VERIFIERS.create('sift_magsac', max_side=side),
              'loftr': lambda side: VERIFIERS.create('loftr', weights=work / 'loftr.ckpt', max_side=side, device=device),
              'disk_lightglue': lambda side: VERIFIERS.create('disk_lightglue', disk_weights=work / 'disk.pth',
                                                              lightglue_weights=work / 'lightglue.pth', max_side=side, device=device)}
    for name, make in makers.items():
        for side in ((64,) if smoke else (256, 512)):
            try:
                verifier = make(side)
                verifier.verify_pair(*pairs[0])
                sync(device)
                start = time.perf_counter()
                for a, b in pairs: verifier.verify_pair(a, b)
                sync(device)
                record('verify_pair', verifier=name, max_side=side, device=device if name != 'sift_magsac' else 'cpu',
                       ok=True, pairs_s=round(len(pairs) / (time.perf_counter() - start), 1))
            except Exception as e:
                record('verify_pair', verifier=name, max_side=side, ok=False, error=f'{type(e).__name__}: {e}'[:300])


def table(rows) -> str:
    "One markdown table per kind of check, with only the columns that kind uses."
    out = []
    for check in dict.fromkeys(r['check'] for r in rows):
        group = [r for r in rows if r['check'] == check]
        keys = [k for k in dict.fromkeys(k for r in group for k in r) if k not in ('check', 'trace')]
        out += [f'### {check}', '| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
        out += ['| ' + ' | '.join('' if r.get(k) is None else str(r.get(k)) for k in keys) + ' |' for r in group] + ['']
    return '\n'.join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', required=True)
    p.add_argument('--smoke', action='store_true', help='tiny sizes on the CPU: check the script itself')
    p.add_argument('--checks', default='training,embed,knn,local_features,backbones', help='comma-separated subset')
    args = p.parse_args()
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    JSON_PATH.append(out / 'gpu_check.json')
    device = 'cpu' if args.smoke or not torch.cuda.is_available() else 'cuda'
    record('env', torch=torch.__version__, python=sys.version.split()[0], device=device,
           gpu=torch.cuda.get_device_name() if device == 'cuda' else None, ok=True)
    from lmkkit.synth import make_synthetic
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp); data = work / 'synth'
        small = dict(n_landmarks=12, train_per_landmark=4) if args.smoke else {}
        make_synthetic(data, seed=0, verbose=False, **small)
        checks = {'training': lambda: check_training(data, work, device, args.smoke),
                  'embed': lambda: check_embed(data, device, args.smoke),
                  'knn': lambda: check_knn(device, args.smoke),
                  'local_features': lambda: check_local_features(data, work, device, args.smoke),
                  'backbones': lambda: check_backbones(device, args.smoke)}
        for name in args.checks.split(','): checks[name]()
    (out / 'gpu_check.md').write_text(table(RESULTS))
    print(table(RESULTS))


if __name__ == '__main__':
    main()
