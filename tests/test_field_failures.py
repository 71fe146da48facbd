"Failure modes reported from the field (issue 14): training that diverges, parameters papermill injects, and a foreign folder with a NaN cache row, a 180-megapixel JPEG and a checkpoint that overflows."
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import lmkkit.cli
from lmkkit.core import ConfigError, TrainingDiverged, make_config
from lmkkit.data import ImageDataset, eval_transforms, id_to_path, nonlandmark_ids, read_train_csv, submission_ids
from lmkkit.embed import NONFINITE, STATUS
from lmkkit.metrics import validate_submission
from lmkkit.model import create_model, save_checkpoint
from lmkkit.pipeline import run_inference
from lmkkit.synth import make_synthetic
from lmkkit.train import PRESETS, TrainConfig, Trainer, init_distributed, nonfinite_tensors
from lmkkit.train_cli import main as train_main

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT/'kaggle_kernels'
TINY = dict(n_landmarks=6, n_unseen=2, n_families=2, train_per_landmark=5, index_per_landmark=3, test_per_landmark=2,
            n_train_nonlandmarks=10, n_index_nonlandmarks=4, n_test_nonlandmarks=6, image_size=64)


@pytest.fixture(scope='module')
def gld(tmp_path_factory):
    root = tmp_path_factory.mktemp('field')/'gld'
    make_synthetic(root, seed=0, verbose=False, **TINY)
    return root


# ---- training that diverges -------------------------------------------------------------------------------------
RUN = dict(stages=((32, 1), (32, 3)), batch_size=4, embedding_size=16, val_every_epochs=0, num_workers=0, head='curricularface',
           warmup_epochs=0.2, checkpoint_every_steps=50)

def _args(**kw) -> list[str]:
    return [a for k, v in {**RUN, **kw}.items() for a in (f'--{k}', repr(v))]

def _last(out: Path) -> dict: return torch.load(out/'last.pt', weights_only=True)

def test_divergence_stops_keeps_the_last_good_checkpoint_and_resumes(gld, tmp_path):
    "A good first stage, then lr 1e4: the run stops at the first NaN loss naming the step; last.pt stays finite and resumes."
    out = tmp_path/'run'
    tr = Trainer(gld, out, make_config(TrainConfig, base=PRESETS['demo'], **RUN), init_distributed('cpu'), verbose=False)
    assert tr._epoch()  # stage 1 (one epoch) ends with a checkpoint
    good = _last(out)
    step = good['position']['step']
    assert step == tr.steps_per_epoch and not nonfinite_tensors(good['model'])
    with pytest.raises(TrainingDiverged, match=rf"training diverged at step \d+/{tr.total_steps} .*lr 10000\): .*"
                                               rf"likely cause: the learning rate is too high.*last.pt holds the finite "
                                               rf"weights of step {step}: fix the setting and run again to resume"):
        train_main([str(gld), str(out), '--preset', 'demo', '--quiet', *_args(lr=1e4)])
    after = _last(out)
    assert after['position'] == good['position'] and not nonfinite_tensors(after['model'])
    assert not nonfinite_tensors(torch.load(out/'model.pt', weights_only=True)['state_dict'])
    assert train_main([str(gld), str(out), '--preset', 'demo', '--quiet', *_args(lr=1e-3)]) == 0  # resumed and finished
    done = _last(out)
    assert done['position']['step'] == tr.total_steps and not nonfinite_tensors(done['model'])


def test_divergence_exits_2_from_the_cli(gld, tmp_path):
    cmd = [sys.executable, '-c', 'import sys, lmkkit.cli; sys.exit(lmkkit.cli.main())', 'train', str(gld), str(tmp_path/'run'), '--preset', 'demo', '--quiet',
           *_args(lr=1e4, stages=((32, 4),))]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert 'training diverged at step' in line and 'likely cause: the learning rate is too high' in line


# ---- parameters injected by papermill ------------------------------------------------------------------------------
def _kernel(name: str, tmp_path: Path, **params):
    import papermill as pm
    return pm.execute_notebook(str(KERNELS/name/f'{name}.ipynb'), str(tmp_path/'run.ipynb'), parameters=params,
                               kernel_name='python3', progress_bar=False, cwd=str(tmp_path))

@pytest.mark.parametrize('name,bad,message', [
    ('lmkkit-recognition', dict(time_limit_hour=9), "no parameter 'time_limit_hour'; did you mean 'time_limit_hours'?"),
    ('lmkkit-retrieval', dict(verifier_weights="{'weights': 'loftr.ckpt'}"),  # -p: a dict arrives as text
     "parameter 'verifier_weights' must be .*pass lists and dicts as YAML with -y"),
    ('lmkkit-train', dict(overrides="{'lr': 3e-4}"), "parameter 'overrides' must be dict.*pass lists and dicts as YAML with -y"),
])
def test_kernels_check_injected_parameters(gld, tmp_path, name, bad, message):
    import papermill as pm
    paths = dict(out_dir=str(tmp_path/'out'), lmkkit_src=str(ROOT)) if name == 'lmkkit-train' else \
        dict(checkpoint=str(tmp_path/'model.pt'), out_dir=str(tmp_path/'out'))
    with pytest.raises(pm.PapermillExecutionError, match=message):
        _kernel(name, tmp_path, data_dir=str(gld), **paths, **bad)
    assert not (tmp_path/'out').exists()  # stopped in the config cell, before any work


# ---- a foreign folder: NaN cache row, 180-megapixel JPEG, a checkpoint that overflows ------------------------------
FAST = dict(image_size=32, batch_size=16, verify_top_n=2, k=5, verbose=False, lgbm_folds=2, lgbm_rounds=10,
            holdout_frac=0.3, holdout_unseen_frac=0.2, device='cpu')
FLT_MAX = float(np.finfo(np.float32).max)

def _neck_inputs(model, paths) -> np.ndarray:
    "The first neck channel before BatchNorm (what the overflowing gain multiplies), per image, as extraction sees it."
    ds = ImageDataset(paths, transform=eval_transforms(32), load_size=32)
    x = torch.stack([ds[i]['image'] for i in range(len(ds))])
    with torch.no_grad(): return model.neck[0](model.pool(model.features(x)))[:, 0].abs().numpy()

def test_a_foreign_folder_still_gets_a_complete_submission_with_every_problem_counted(gld, tmp_path):
    data = tmp_path/'data'
    make_synthetic(data, seed=1, verbose=False, **TINY)
    ids = submission_ids(data, 'recognition')
    big = id_to_path(data, 'test', ids[0])  # 15000 x 12000 = 180 megapixels, over twice Pillow's bomb limit
    Image.new('L', (15000, 12000), 128).save(big, quality=50)
    assert big.stat().st_size < 5e6
    # a checkpoint on the edge of divergence: one BatchNorm gain of the neck so large that bright inputs overflow float32
    torch.manual_seed(0)
    model = create_model('test_resnet', embedding_size=16, head=None).eval()
    train = read_train_csv(data/'train.csv')
    splits = {'test': ids, 'train': train['id'].tolist(), 'nonlandmarks': nonlandmark_ids(data)}
    z = {s: _neck_inputs(model, [id_to_path(data, 'test' if s == 'test' else 'train', i) for i in v]) for s, v in splits.items()}
    top = np.sort(z['test'])[::-1]
    cut = (top[1] + top[2]) / 2  # the two test images with the largest input to that channel overflow
    with torch.no_grad():  # the input `cut` leaves the linear layer as 1e3 and the BatchNorm as FLT_MAX
        model.neck[0].weight[0] *= 1e3 / cut
        model.neck[1].weight[0] = FLT_MAX / 1e3 * np.sqrt(1 + model.neck[1].eps)
    save_checkpoint(tmp_path/'model.pt', model, None)
    overflow = {s: int((v > cut).sum()) for s, v in z.items()}
    assert overflow['test'] == 2 and 0 < overflow['train'] < len(train)

    kw = dict(data_dir=str(data), checkpoint=str(tmp_path/'model.pt'), cache_dir=str(tmp_path/'cache'), **FAST)
    first = run_inference(out_dir=str(tmp_path/'first'), **kw)
    # one NaN row in the cache (e.g. written before extraction checked its vectors): the second run loads it from there
    split_dir = sorted((tmp_path/'cache').glob('*/*/emb.npy'))[0].parent  # a split's array cache (lmkkit.embed.SplitCache)
    row = int(np.flatnonzero(np.load(split_dir/'status.npy') == STATUS.index('ok'))[0])
    cached = np.load(split_dir/'emb.npy', mmap_mode='r+'); cached[row] = np.nan; cached.flush(); del cached
    res = run_inference(out_dir=str(tmp_path/'second'), **kw)

    assert validate_submission(res.submission, ids)[0] == 'recognition'  # complete and valid
    assert res.submission.read_text() == first.submission.read_text()  # the cached NaN was dropped and extracted again
    sub = pd.read_csv(res.submission, dtype=str, keep_default_na=False).set_index('id')['landmarks']
    assert sub[ids[0]] != ''  # the 180-megapixel JPEG was read (draft decoding) and answered
    metrics = json.loads((tmp_path/'second'/'metrics.json').read_text())
    for step, split in [('embed_test', 'test'), ('embed_train', 'train'), ('embed_nonlandmarks', 'nonlandmarks')]:
        assert metrics[f'{step}_failures'] == {'missing': 0, 'too large': 0, 'corrupt': 0, NONFINITE: overflow[split]}, step
        assert metrics[f'{step}_unreadable'] == overflow[split]
    assert metrics['embed_cache_nonfinite'] == 1
    assert set(sub[sub == ''].index) >= set(np.array(ids)[z['test'] > cut])  # no vector, no answer: the row stays empty
    note = res.timeline.set_index('step').loc['embed_test', 'note']
    assert f"{overflow['test']} unreadable ({NONFINITE}: {overflow['test']})" in note
