"Failure modes reported from the field, round 2 (issue 26): a small /dev/shm, coupled augmentations, prefixed weights, a full disk, file names that are not UTF-8, DDP with unused parameters, unlisted test images."
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from lmkkit.core import ConfigError, make_config
from lmkkit.data import SAMPLE, id_to_path, submission_ids, train_transforms
from lmkkit.metrics import validate_submission
from lmkkit.model import create_model, save_checkpoint
from lmkkit.pipeline import run_inference
from lmkkit.synth import make_synthetic
from lmkkit.train import PRESETS, AugSeeded, TrainConfig, Trainer, init_distributed

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1',
           NO_ALBUMENTATIONS_UPDATE='1')
TINY = dict(n_landmarks=6, n_unseen=2, n_families=2, train_per_landmark=5, index_per_landmark=3, test_per_landmark=2,
            n_train_nonlandmarks=10, n_index_nonlandmarks=4, n_test_nonlandmarks=6, image_size=64)
RUN = dict(batch_size=4, embedding_size=16, val_every_epochs=0, num_workers=0, warmup_epochs=0.2, checkpoint_every_steps=1000)
FAST = dict(image_size=32, batch_size=16, k=5, verbose=False, device='cpu', num_workers=0, stages=())


@pytest.fixture(scope='module')
def gld(tmp_path_factory):
    root = tmp_path_factory.mktemp('field2')/'gld'
    make_synthetic(root, seed=0, verbose=False, **TINY)
    return root

@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp('ckpt')/'model.pt', create_model('test_resnet', embedding_size=16, head=None), None)

def _args(**kw) -> list[str]:
    return [a for k, v in {**RUN, **kw}.items() for a in (f'--{k}', repr(v))]

def _answers(submission: Path) -> int:
    "Rows of a submission with an answer."
    return int((pd.read_csv(submission, dtype=str, keep_default_na=False).iloc[:, 1] != '').sum())


# ---- a small tmpfs: /dev/shm, a full disk ----------------------------------------------------------------------
def _can_mount() -> str | None:
    "Why tmpfs mounts in a private mount namespace cannot be tested here, or None when they can."
    if not sys.platform.startswith('linux') or shutil.which('unshare') is None: return 'needs Linux and unshare'
    r = subprocess.run(['unshare', '-m', 'sh', '-c', 'mount -t tmpfs -o size=1m tmpfs /mnt'], capture_output=True, text=True)
    return None if r.returncode == 0 else f"unshare -m + mount not allowed here: {r.stderr.strip()[:120]}"

NO_MOUNT = _can_mount()

def _in_tmpfs(mountpoint: Path, size: str, script: str, *args) -> subprocess.CompletedProcess:
    "Run the Python `script` in a private mount namespace where `mountpoint` is a fresh tmpfs of `size`."
    Path(mountpoint).mkdir(parents=True, exist_ok=True)
    cmd = f'mount -t tmpfs -o size={size} tmpfs "$0" && exec "$1" -c "$2" "${{@:3}}"'
    return subprocess.run(['unshare', '-m', 'bash', '-c', cmd, str(mountpoint), sys.executable, script, *map(str, args)],
                          env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT)

SHM_SCRIPT = '''
import sys, warnings
from pathlib import Path
import pandas as pd
from lmkkit.train_cli import main
from lmkkit.pipeline import run_inference
gld, out, ckpt = map(Path, sys.argv[1:4])
assert main([str(gld), str(out/'train'), '--preset', 'demo', '--quiet', *sys.argv[4:]]) == 0
res = run_inference(data_dir=str(gld), checkpoint=str(ckpt), out_dir=str(out/'infer'), image_size=192, batch_size=16,
                    num_workers=2, stages=(), k=5, verbose=False, device='cpu')
print('ANSWERS', int((pd.read_csv(res.submission, dtype=str, keep_default_na=False)['landmarks'] != '').sum()))
'''

@pytest.mark.skipif(NO_MOUNT is not None, reason=str(NO_MOUNT))
@pytest.mark.timeout(600)
def test_a_1mb_dev_shm_falls_back_to_loading_in_process(gld, checkpoint, tmp_path):
    "Row 1: /dev/shm of 1 MB, 2 workers, batches of 1.8 MB (train) and 7 MB (inference): one warning each, both finish."
    r = _in_tmpfs(Path('/dev/shm'), '1m', SHM_SCRIPT, gld, tmp_path, checkpoint, *_args(num_workers=2, stages=((192, 1),)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'shared memory(shm)' not in r.stderr
    warned = [l for l in r.stderr.splitlines() if '/dev/shm has' in l and '--shm-size' in l]
    assert len(warned) == 2 and all('in the main process' in l for l in warned), r.stderr[-3000:]
    assert (tmp_path/'train'/'model.pt').is_file()
    n = len(submission_ids(gld, 'recognition'))
    assert 0 < int(r.stdout.split('ANSWERS')[1]) <= n  # the kNN answer, not an empty submission

FULL_TRAIN = '''
import shutil, sys, torch
from pathlib import Path
from lmkkit.core import make_config
from lmkkit.train import PRESETS, TrainConfig, Trainer, init_distributed
gld, out = sys.argv[1:3]
cfg = make_config(TrainConfig, base=PRESETS['demo'], stages=((32, 1), (32, 1)), batch_size=4, embedding_size=16,
                  val_every_epochs=0, num_workers=0, checkpoint_every_steps=1000)
tr = Trainer(gld, out, cfg, init_distributed('cpu'), verbose=False)
assert tr._epoch()
print('SAVED', tr.saved_step)
Path(out, 'filler').write_bytes(bytes(shutil.disk_usage(out).free - 64 * 1024))  # the disk fills up: 64 kB left
try: tr._epoch()
except Exception as e: print('ERROR', type(e).__name__, str(e).replace(chr(10), ' | '))
print('LAST', torch.load(Path(out)/'last.pt', weights_only=True)['position']['step'])
'''

@pytest.mark.skipif(NO_MOUNT is not None, reason=str(NO_MOUNT))
@pytest.mark.timeout(600)
def test_a_full_disk_stops_training_in_one_line_and_keeps_the_checkpoint(gld, tmp_path):
    "Row 4, training: the second checkpoint meets a full disk; one line names last.pt and 'no space left'; the first stays."
    out = tmp_path/'run'
    r = _in_tmpfs(out, '32m', FULL_TRAIN, gld, out)
    saved = int(r.stdout.split('SAVED ')[1].split()[0])
    error = r.stdout.split('ERROR ')[1].splitlines()[0]
    assert error.startswith('TrainError ') and f"cannot write {out/'last.pt'}: no space left on device" in error, r.stdout
    assert f'keeps step {saved}' in error and 'previous checkpoint is kept' in error and ' | ' not in error
    assert int(r.stdout.split('LAST ')[1].split()[0]) == saved

FULL_INFER = '''
import json, shutil, sys
from pathlib import Path
from lmkkit.pipeline import run_inference
gld, ckpt, out = sys.argv[1:4]
Path(out, 'filler').write_bytes(bytes(shutil.disk_usage(out).free - 40 * 1024))  # 40 kB left: not enough for the cache
res = run_inference(data_dir=gld, checkpoint=ckpt, out_dir=out, image_size=32, batch_size=16, num_workers=0, stages=(),
                    k=5, verbose=False, device='cpu')
print('RESULT', json.dumps(json.loads(Path(out, 'metrics.json').read_text())))
'''

@pytest.mark.skipif(NO_MOUNT is not None, reason=str(NO_MOUNT))
@pytest.mark.timeout(600)
def test_inference_on_a_full_disk_goes_on_without_the_cache(gld, tmp_path):
    "Row 4, inference: out_dir (and its cache) on a full disk: the cache is dropped with a warning, the kNN answer submitted."
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path/'model.pt', create_model('test_resnet', embedding_size=512, head=None), None)  # 2 kB a row
    out = tmp_path/'out'
    r = _in_tmpfs(out, '8m', FULL_INFER, gld, ckpt, out)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads(r.stdout.split('RESULT ')[1])
    assert 'no space left on device' in metrics['embed_cache_off'], metrics
    assert sum('embedding cache' in l and 'no space left' in l for l in r.stderr.splitlines()) == 1
    assert metrics['stages'][0]['stage'] == 'knn_top1' and metrics['gap'] is not None


# ---- augmentations that decide together --------------------------------------------------------------------------
class Applied(torch.utils.data.Dataset):
    "One fixed picture through the training transforms: (names of the transforms that fired, the image)."
    def __init__(self, n: int = 400):
        self.n, self.transform = n, train_transforms(16)
        self.transform.save_applied_params = True
        self.img = np.random.default_rng(0).integers(0, 255, (24, 24, 3), np.uint8)
    def __len__(self): return self.n
    def __getitem__(self, i):
        out = self.transform(image=self.img)
        return {n for n, _ in out['applied_transforms']}, out['image']

def test_training_augmentations_fire_independently_and_reproducibly():
    "Row 2: of 400 items, about a quarter per joint outcome of every two p=0.5 transforms; the same key, the same image."
    ds = AugSeeded(Applied(), seed=0)
    fired = [ds[(0, i)][0] for i in range(400)]
    names = ('HorizontalFlip', 'ImageCompression', 'Affine', 'CoarseDropout')
    for a, b in combinations(names, 2):
        joint = Counter((a in f, b in f) for f in fired)
        assert all(60 <= joint[k] <= 140 for k in [(0, 0), (0, 1), (1, 0), (1, 1)]), (a, b, joint)  # ~100 each
    first = ds[(3, 17)][1]
    for i in range(5): ds[(3, i)]  # other items in between: a resumed run draws item 17 of epoch 3 alike
    assert torch.equal(AugSeeded(Applied(), seed=0)[(3, 17)][1], first)
    assert not torch.equal(ds[(4, 17)][1], first) or not torch.equal(ds[(5, 17)][1], first)  # another epoch, other draws
    images = torch.stack([ds[(0, i)][1] for i in range(40)])
    assert len({x.numpy().tobytes() for x in images}) >= 36  # of 40 copies of one picture, few come out identical


# ---- pretrained weights under a prefix -----------------------------------------------------------------------------
def _wrapped(ref: dict, kind: str, backbone: str):
    if kind == 'lightning': return {'state_dict': {f'model.{k}': v for k, v in ref.items()}, 'epoch': 3, 'global_step': 90}
    if kind == 'moco': return {'arch': backbone, 'state_dict': {f'module.encoder_q.{k}': v for k, v in ref.items()}}
    model = create_model(backbone, embedding_size=16, head=None)
    model.backbone.load_state_dict({k: v for k, v in ref.items() if k in model.backbone.state_dict()})
    return model

@pytest.mark.parametrize('backbone', ['test_convnext', 'test_resnet'])
@pytest.mark.parametrize('kind', ['lightning', 'moco', 'lmkkit'])
def test_pretrained_weights_under_a_prefix_load_and_are_counted(gld, tmp_path, kind, backbone, capsys):
    "Row 3: Lightning's `model.`, MoCo's `module.encoder_q.`, the kit's own `backbone.`: every backbone tensor loaded, counted."
    torch.manual_seed(1)
    ref = timm.create_model(backbone, pretrained=False).state_dict()
    path = tmp_path/'weights.pt'
    obj = _wrapped(ref, kind, backbone)
    if kind == 'lmkkit': save_checkpoint(path, obj, None)
    else: torch.save(obj, path)
    cfg = make_config(TrainConfig, base=PRESETS['demo'], backbone=backbone, pretrained=str(path), stages=((32, 1),), **RUN)
    tr = Trainer(gld, tmp_path/'run', cfg, init_distributed('cpu'), verbose=True)
    got = tr.model.backbone.state_dict()
    assert got and all(torch.equal(v, ref[k]) for k, v in got.items())
    assert f'{len(got)} of {len(got)} backbone tensors loaded from {path}' in capsys.readouterr().out

def test_pretrained_weights_of_another_architecture_stop_in_one_line(tmp_path):
    torch.save({'state_dict': timm.create_model('test_resnet', pretrained=False).state_dict()}, tmp_path/'resnet.pth')
    with pytest.raises(ConfigError, match=r"pretrained weights .*resnet.pth: only \d+ of the \d+ tensors of test_convnext"):
        create_model('test_convnext', pretrained=tmp_path/'resnet.pth')


# ---- DDP and parameters forward_features never uses ------------------------------------------------------------------
DDP_MAIN = 'import sys; from lmkkit.train_cli import main; sys.exit(main(sys.argv[1:]))'

@pytest.mark.timeout(600)
def test_ddp_trains_convnext_and_checkpoints_hold_only_trained_tensors(gld, tmp_path):
    "Row 6: torchrun x 2 (gloo) on test_convnext, whose timm head.norm forward_features never uses."
    script = tmp_path/'train_main.py'
    script.write_text(DDP_MAIN)
    args = _args(backbone='test_convnext', head='arcface', stages=((32, 2),))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--standalone', str(script),
           str(gld), str(tmp_path/'two'), '--preset', 'demo', '--quiet', '--device', 'cpu', *args]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    state = torch.load(tmp_path/'two'/'model.pt', weights_only=True)['state_dict']
    assert not [k for k in state if k.startswith('backbone.head.')]
    one = Trainer(gld, tmp_path/'one', make_config(TrainConfig, base=PRESETS['demo'], backbone='test_convnext',
                                                  stages=((32, 1),), **RUN), init_distributed('cpu'), verbose=False)
    before = {k: v.clone() for k, v in one.model.state_dict().items()}
    one.fit()
    after = torch.load(tmp_path/'one'/'model.pt', weights_only=True)['state_dict']
    untrained = [k for k, p in one.model.named_parameters() if torch.equal(after[k], before[k])]
    assert not untrained and not [k for k in after if k.startswith('backbone.head.')], untrained


# ---- test file names and the sample submission ---------------------------------------------------------------------
def _copy(gld: Path, tmp_path: Path) -> Path:
    data = tmp_path/'gld'
    shutil.copytree(gld, data)
    return data

@pytest.mark.parametrize('track', ['recognition', 'retrieval'])
def test_a_test_file_name_that_is_not_utf8_is_left_out_and_counted(gld, checkpoint, tmp_path, track):
    "Row 5: no sample submission, one test image named in Latin-1 bytes: a complete submission of the others, the name counted."
    data = _copy(gld, tmp_path)
    for name in (*SAMPLE.values(), 'sample_submission.csv'): (data/name).unlink(missing_ok=True)
    ids = submission_ids(data, track)
    folder = id_to_path(data, 'test', ids[0]).parent
    shutil.copy(id_to_path(data, 'test', ids[0]), os.path.join(os.fsencode(folder), ids[0][:3].encode() + b'caf\xe9.jpg'))
    res = run_inference(data_dir=str(data), checkpoint=str(checkpoint), out_dir=str(tmp_path/'out'), track=track, **FAST)
    assert validate_submission(res.submission, ids)[0] == track and _answers(res.submission) > 0
    metrics = json.loads((tmp_path/'out'/'metrics.json').read_text())
    assert metrics['test_names_not_utf8'] == 1
    assert '1 test file names are not UTF-8' in res.timeline.set_index('step').loc['public_check', 'note']

def test_test_images_the_sample_submission_does_not_list_are_counted(gld, checkpoint, tmp_path):
    "Row 7: two test images on disk that the sample submission leaves out: counted in the timeline and metrics.json."
    data = _copy(gld, tmp_path)
    ids = submission_ids(data, 'recognition')
    assert (data/SAMPLE['recognition']).is_file()
    for extra in ('abc0000000000001', 'abc0000000000002'):
        id_to_path(data, 'test', extra).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(id_to_path(data, 'test', ids[0]), id_to_path(data, 'test', extra))
    res = run_inference(data_dir=str(data), checkpoint=str(checkpoint), out_dir=str(tmp_path/'out'), **FAST)
    assert validate_submission(res.submission, ids)[0] == 'recognition'
    assert json.loads((tmp_path/'out'/'metrics.json').read_text())['test_unlisted'] == 2
    assert '2 test images on disk are not in the sample submission' in res.timeline.set_index('step').loc['public_check', 'note']
