"""The commit-time (public) run at the real sizes: a 1,580,470-row train.csv and 1,000 test images, detected as
public from the counts, ends in minutes with a complete submission and opens no train image outside its sample."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmkkit.data import id_to_path, list_ids, paths_for, read_train_csv
from lmkkit.kaggle import PUBLIC_TRAIN_ROWS
from lmkkit.metrics import validate_submission
from lmkkit.model import create_model, save_checkpoint
from lmkkit.pipeline import public_sample
from lmkkit.synth import make_synthetic

N_TEST = 1000
TINY = dict(n_landmarks=6, n_unseen=2, n_families=2, train_per_landmark=5, index_per_landmark=3, test_per_landmark=2,
            n_train_nonlandmarks=10, n_index_nonlandmarks=4, n_test_nonlandmarks=6, image_size=64)


def hex_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    "`n` random 16-hex ids, vectorised (one hex string cut into 16-byte cells)."
    return np.frombuffer(rng.bytes(8 * n).hex().encode(), dtype='S16').astype(str)


def public_folder(root: Path, n_real: int, seed: int = 0) -> Path:
    """A GLDv2 folder at the public run's sizes: 1,580,470 train.csv rows, of which `n_real` have an image (the synth's
    train images, copied under new ids where it has too few) at the rows of the public run's sample of `n_real` (which
    holds its smaller samples); the rest are fake ids without files. Plus 1,000 test images (a few synthetic ones)."""
    data, rng = root/'data', np.random.default_rng([seed, 2026])  # not the synth's own stream of ids
    make_synthetic(data, seed=seed, verbose=False, **TINY)
    synth = read_train_csv(data/'train.csv')
    src = np.resize(np.arange(len(synth)), n_real - len(synth))  # copy the synth's images round-robin
    copies = synth.iloc[src].assign(id=hex_ids(rng, len(src)))
    for a, b in zip(paths_for(data, 'train', synth['id'].iloc[src]), paths_for(data, 'train', copies['id'])):
        Path(b).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(a, b)
    real, rows = pd.concat([synth, copies]), public_sample(PUBLIC_TRAIN_ROWS, n_real, seed)
    train = pd.DataFrame({'id': hex_ids(rng, PUBLIC_TRAIN_ROWS), 'landmark_id': rng.integers(0, 81_313, PUBLIC_TRAIN_ROWS)})
    train.loc[rows, 'id'], train.loc[rows, 'landmark_id'] = real['id'].to_numpy(), real['landmark_id'].to_numpy()
    train.to_csv(data/'train.csv', index=False)
    images = [Path(p).read_bytes() for p in paths_for(data, 'test', list_ids(data, 'test'))]
    shutil.rmtree(data/'test')
    test_ids = hex_ids(rng, N_TEST)
    for k, i in enumerate(test_ids):
        dst = id_to_path(data, 'test', i)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(images[k % len(images)])
    pd.DataFrame({'id': test_ids, 'landmarks': ''}).to_csv(data/'recognition_sample_submission.csv', index=False)
    (data/'recognition_solution.csv').unlink()  # Kaggle's folder has no solution
    return data


RUN = """
import json, resource, sys
import lmkkit.data
log, load = sys.argv[2], lmkkit.data.load_image_reason
def spy(path, size=None):  # appended to a file: the DataLoader's workers are forked processes
    with open(log, 'a') as f: f.write(f'{path}\\n')
    return load(path, size)
lmkkit.data.load_image_reason = spy  # ImageDataset reads every image through it
from lmkkit.pipeline import run_inference
res = run_inference(**json.loads(sys.argv[1]))
opened = open(log).read().splitlines()
print(json.dumps(dict(opened=opened, report=res.report, skipped=res.skipped, rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)))
"""


def run_public(data: Path, checkpoint: Path, out: Path, **cfg) -> tuple[dict, float]:
    "run_inference with public_run='auto' in a fresh process: (its report, opened images and peak RSS; wall seconds)."
    cfg = dict(data_dir=str(data), checkpoint=str(checkpoint), out_dir=str(out), cache_dir=str(out/'cache'), public_run='auto',
               verbose=False, **cfg)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, '-c', RUN, json.dumps(cfg), str(out) + '.opened'], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), seconds


def checkpoint(root: Path) -> Path:
    "An untrained tiny model that embeds at 32 px."
    save_checkpoint(root/'model.pt', create_model('test_resnet', embedding_size=16, head=None), None,
                    extra={'train_config': {'stages': [[32, 1]]}})
    return root/'model.pt'


def check_public_run(root: Path, cap: int, **cfg) -> tuple[dict, float, pd.DataFrame]:
    "Build the folder for a sample of at most `cap`, run it as public, check all but the time: (result, seconds, timeline)."
    data = public_folder(root, cap)
    got, seconds = run_public(data, checkpoint(root), root/'out', public_sample_max=cap, **cfg)
    timeline = pd.read_csv(root/'out'/'timeline.csv').set_index('step')
    assert timeline.loc['public_check', 'note'].startswith('public run'), timeline  # detected from the counts alone
    assert any('knn_top1 only' in s for s in got['skipped']), got['skipped']
    test_ids = pd.read_csv(data/'recognition_sample_submission.csv')['id'].tolist()
    track, preds = validate_submission(root/'out'/'submission.csv', test_ids)  # complete: every test id, once
    assert track == 'recognition' and len(preds) == N_TEST  # every test image readable: each has a landmark
    n = int(timeline.loc['public_sample', 'note'].split()[0])  # cap, or fewer if the measured rate is low
    assert 1 <= n <= cap and f'{n} of {PUBLIC_TRAIN_ROWS} train images' in timeline.loc['public_sample', 'note']
    train = pd.read_csv(data/'train.csv', dtype={'id': str})
    sample = set(train['id'].iloc[public_sample(PUBLIC_TRAIN_ROWS, n, seed=0)])  # part of the rows that have images
    assert {Path(p).stem for p in got['opened'] if p.startswith(f'{data}/train/')} == sample  # no fake id, no other train image opened
    assert got['report']['embed_train_unreadable'] == 0
    assert {Path(p).stem for p in got['opened'] if p.startswith(f'{data}/test/')} == set(test_ids)
    return got, seconds, timeline


def test_public_run_at_real_size(tmp_path):
    "A 2,000-image sample keeps this test short; the default 10,000 is measured by running this file (figures below)."
    got, seconds, timeline = check_public_run(tmp_path, 2000, batch_size=64)
    print(f"public run: {seconds:.1f} s wall, peak RSS {got['rss'] / 2**30:.2f} GiB\n{timeline}")
    assert seconds < 180 and got['rss'] < 2 * 2**30  # the goal: under 3 minutes and 2 GB


if __name__ == '__main__':  # the measurement at the defaults: python tests/test_public_run.py
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        got, seconds, timeline = check_public_run(Path(d), 10_000)
        print(f"public run at the defaults: {seconds:.1f} s wall, peak RSS {got['rss'] / 2**30:.2f} GiB")
        print(timeline[['planned_s', 'actual_s', 'start_s', 'note']].to_string(max_colwidth=70))
