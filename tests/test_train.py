"End-to-end tests of lmkkit.train: exact resume after SIGKILL and after the time budget, DDP on CPU, bad input, the kernel."
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

from lmkkit.core import ConfigError, Deadline, make_config
from lmkkit.data import DataError
from lmkkit.train import PRESETS, TrainConfig, TrainError, train
from lmkkit.train_cli import main

ROOT = Path(__file__).resolve().parents[1]
KERNEL = ROOT/'kaggle_kernels'/'lmkkit-train'
# one thread everywhere: the same float sums in every process (and no fight over 2 busy cores)
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONPATH=str(ROOT))
TINY = dict(stages=((32, 1), (40, 1)), batch_size=8, embedding_size=16, num_workers=0, log_every_steps=1,
            checkpoint_every_steps=100, val_max_index=64, deterministic=True)
CLI = [sys.executable, '-c', 'import sys; from lmkkit.train_cli import main; sys.exit(main(sys.argv[1:]))']

def tiny(**kw) -> TrainConfig: return make_config(TrainConfig, base=PRESETS['demo'], **{**TINY, **kw})
def cli_args(cfg_kw: dict) -> list[str]:
    return [a for k, v in {**TINY, **cfg_kw}.items() for a in (f"--{k.replace('_', '-')}", repr(v))]
def weights(run: Path) -> dict: return torch.load(run/'last.pt', weights_only=True)['model']

def assert_same_weights(a: dict, b: dict, atol: float = 1e-6):
    assert a.keys() == b.keys()
    for k in a: assert torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=atol), k

@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture(scope='session')
def reference(gld, tmp_path_factory):
    "An uninterrupted run of the tiny recipe."
    out = tmp_path_factory.mktemp('ref')
    torch.set_num_threads(1)
    res = train(gld, out, tiny(), device='cpu', verbose=False)
    assert res.finished and res.step == res.total_steps
    return out

def test_uninterrupted_run_writes_everything(reference):
    names = {p.name for p in reference.iterdir()}
    assert {'last.pt', 'model.pt', 'model_32px.pt', 'model_40px.pt', 'metrics.csv'} <= names
    m = pd.read_csv(reference/'metrics.csv')
    assert m['step'].is_monotonic_increasing and m['val_gap'].notna().sum() == 2
    assert set(m['image_size']) == {32, 40} and (m['images_per_s'] > 0).all()
    from lmkkit.model import load_checkpoint
    model, class_ids, _ = load_checkpoint(reference/'model.pt')
    assert len(class_ids) == model(torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))['logits'].shape[1]

@pytest.mark.timeout(300)  # two training processes; runs in the default suite, kept tiny (12 steps)
def test_sigkill_mid_epoch_then_resume_matches(gld, reference, tmp_path):
    out = tmp_path/'run'
    cmd = CLI + [str(gld), str(out), '--preset', 'demo', '--quiet'] + cli_args(dict(checkpoint_every_steps=1))
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while not (out/'last.pt').exists() and proc.poll() is None: time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0].decode()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{output}"
    state = torch.load(out/'last.pt', weights_only=True)
    total = torch.load(reference/'last.pt', weights_only=True)['position']['step']
    assert 0 < state['position']['step'] < total
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_weights(weights(out), weights(reference))
    m, r = pd.read_csv(out/'metrics.csv'), pd.read_csv(reference/'metrics.csv')
    assert m['step'].tolist() == r['step'].tolist()

def test_time_budget_stops_mid_epoch_and_resumes_exactly(gld, reference, tmp_path, capsys):
    "A clock that jumps 1 s at every look: the budget (5 s) must stop after about 4 steps, mid-epoch, and save."
    ticks = iter(range(1000))
    res = train(gld, tmp_path, tiny(), deadline=Deadline(5, start=0, clock=lambda: float(next(ticks))), device='cpu')
    assert not res.finished and 0 < res.step < 6  # 6 steps in the first epoch
    state = torch.load(tmp_path/'last.pt', weights_only=True)
    assert state['position']['batch'] == res.step and state['position']['epoch'] == 0
    assert 'run the same command again to continue' in capsys.readouterr().out
    assert main([str(gld), str(tmp_path), '--preset', 'demo', '--quiet', '--device', 'cpu'] + cli_args({})) == 0
    assert_same_weights(weights(tmp_path), weights(reference))

def test_tiny_time_limit_stops_before_it_runs_out(gld, tmp_path, capsys):
    "0.5 s is less than a checkpoint save is estimated to take (>= 1 s): stop before the first step, saved."
    assert main([str(gld), str(tmp_path), '--preset', 'demo', '--device', 'cpu'] +
                cli_args(dict(time_limit_hours=0.5 / 3600))) == 3
    assert 'time budget reached at step 0/12' in capsys.readouterr().out
    assert torch.load(tmp_path/'last.pt', weights_only=True)['position'] == dict(epoch=0, batch=0, step=0)
    res = train(gld, tmp_path, tiny(), device='cpu', verbose=False)
    assert res.finished and res.step == 12

def test_time_limit_counts_from_the_kernel_start(gld, tmp_path, monkeypatch):
    "One clock: a kernel that started an hour ago (its first cell set $LMKKIT_KERNEL_START) has no time left of a 30-minute limit."
    monkeypatch.setenv('LMKKIT_KERNEL_START', str(time.time() - 3600))
    res = train(gld, tmp_path/'env', tiny(time_limit_hours=0.5), device='cpu', verbose=False)
    assert (res.finished, res.step) == (False, 0) and (tmp_path/'env'/'last.pt').is_file()
    monkeypatch.delenv('LMKKIT_KERNEL_START')
    res = train(gld, tmp_path/'arg', tiny(time_limit_hours=0.5), device='cpu', verbose=False, kernel_start=time.time() - 3600)
    assert (res.finished, res.step) == (False, 0)

def test_training_kernel_starts_the_clock_in_its_first_cell():
    "The training kernel's first code cell sets $LMKKIT_KERNEL_START, as the inference kernels' do."
    nb = json.loads((KERNEL/'lmkkit-train.ipynb').read_text())
    first = ''.join(next(c for c in nb['cells'] if c['cell_type'] == 'code')['source'])
    assert "os.environ.setdefault('LMKKIT_KERNEL_START', str(time.time()))" in first

@pytest.mark.timeout(300)  # torchrun with 2 gloo processes; runs in the default suite, kept tiny (12 steps)
def test_ddp_two_processes_match_one(gld, tmp_path):
    """2 gloo processes x 4 images = 1 process x 8 images: the same loss at every step (relative 1e-4).

    BatchNorm would normalise each process's 4 images apart (SyncBatchNorm, which fixes that, has no CPU kernel), and
    CurricularFace keeps a running mean of the batch's target logits; so the CPU comparison freezes BatchNorm and uses
    ArcFace, which makes one process and two compute the same function of the same 8 images. It pools by averaging:
    GeM's scalar p gets a tiny, near-cancelling gradient that Adam divides by its own RMS, so the rounding of the
    all-reduce decides the sign of its steps and p drifts apart by up to the learning rate per step."""
    kw = dict(freeze_bn=True, head='arcface', pool='avg', stages=((32, 2),))
    one = train(gld, tmp_path/'one', tiny(**kw), device='cpu', verbose=False)
    script = tmp_path/'train_main.py'
    script.write_text(CLI[2])
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--standalone', str(script),
           str(gld), str(tmp_path/'two'), '--preset', 'demo', '--quiet', '--device', 'cpu'] + cli_args({**kw, 'batch_size': 4})
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    a, b = pd.read_csv(tmp_path/'one'/'metrics.csv'), pd.read_csv(tmp_path/'two'/'metrics.csv')
    assert a['step'].tolist() == b['step'].tolist() and len(a) == one.total_steps
    assert ((a['loss'] - b['loss']).abs() <= 1e-4 * a['loss'].abs() + 1e-5).all(), pd.concat([a['loss'], b['loss']], axis=1)
    assert_same_weights(weights(tmp_path/'one'), weights(tmp_path/'two'), atol=1e-4)

def test_unreadable_images_are_skipped_and_counted(gld, tmp_path):
    data = tmp_path/'gld'
    shutil.copytree(gld, data)
    ids = pd.read_csv(data/'train.csv', dtype=str)['id'][:3]
    from lmkkit.data import id_to_path
    for i in ids: id_to_path(data, 'train', i).write_bytes(b'not a jpeg')
    res = train(data, tmp_path/'run', tiny(stages=((32, 1),), val_every_epochs=0), device='cpu', verbose=False)
    assert res.finished and res.bad_images > 0
    assert pd.read_csv(tmp_path/'run'/'metrics.csv')['bad_images'].sum() == res.bad_images

@pytest.mark.parametrize('csv, message', [
    ('id\na1\n', 'missing column(s) landmark_id'),
    ('id,landmark_id\na1,3\na2,\n', 'line 3'),
    ('id,landmark_id\na1,3\na2,nan\n', "landmark_id 'nan'"),
])
def test_bad_train_csv_stops_at_once(tmp_path, csv, message):
    (tmp_path/'train.csv').write_text(csv)
    with pytest.raises(DataError, match=message.replace('(', r'\(').replace(')', r'\)')):
        train(tmp_path, tmp_path/'run', tiny(), device='cpu', verbose=False)

def test_resume_with_unknown_classes_stops(gld, reference, tmp_path):
    data = tmp_path/'gld'
    shutil.copytree(gld, data)
    df = pd.read_csv(data/'train.csv', dtype=str)
    df.loc[0, 'landmark_id'] = '99999'
    df.to_csv(data/'train.csv', index=False)
    shutil.copy(reference/'last.pt', tmp_path/'last.pt')
    with pytest.raises(TrainError, match=r"1 unknown, e.g. \[99999\]"):
        train(data, tmp_path, tiny(), device='cpu', verbose=False)

def test_wrong_parameter_type_stops(gld, tmp_path):
    with pytest.raises(ConfigError, match="parameter 'lr' must be float, got 'fast'"):
        main([str(gld), str(tmp_path), '--preset', 'demo', '--lr', 'fast'])
    with pytest.raises(TrainError, match='other settings: batch_size'):
        out = tmp_path/'r'
        train(gld, out, tiny(stages=((32, 1),), val_every_epochs=0), device='cpu', verbose=False)
        train(gld, out, tiny(stages=((32, 1),), val_every_epochs=0, batch_size=4), device='cpu', verbose=False)

def test_library_messages_name_parameters_not_options():
    "A caller of the library (a kernel, a script) reads the parameter to set; only `lmkkit.cli` turns it into `--lr`."
    with pytest.raises(ConfigError) as e: TrainConfig(lr=-1)
    assert "parameter 'lr' must be positive" in str(e.value) and '`lr=3e-4`' in str(e.value) and '--' not in str(e.value)
    if not torch.cuda.is_available():
        from lmkkit.train import init_distributed
        with pytest.raises(ConfigError) as e: init_distributed('cuda')
        assert "use `device='cpu'`" in str(e.value) and '--' not in str(e.value)

def test_trainer_is_one_class_in_one_place():
    "Every method of `Trainer` is written in its class body (no pieces added from elsewhere with `@patch`)."
    import inspect
    from lmkkit.train import Trainer
    body = inspect.getsource(Trainer)
    methods = [n for n, f in vars(Trainer).items() if inspect.isfunction(f)]
    assert len(methods) > 20 and [n for n in methods if f"def {n}(" not in body] == []

def run_kernel(gld, out_dir, tmp_path, **params):
    import papermill as pm
    return pm.execute_notebook(str(KERNEL/'lmkkit-train.ipynb'), str(tmp_path/'out.ipynb'), kernel_name='python3',
                               progress_bar=False, cwd=str(tmp_path),
                               parameters=dict(data_dir=str(gld), out_dir=str(out_dir), preset='demo', stages=[[32, 1]],
                                               lmkkit_src=str(ROOT),
                                               overrides=dict(val_max_index=32, batch_size=8, num_workers=0), **params))

def test_training_kernel_runs_under_papermill(gld, tmp_path):
    run_kernel(gld, tmp_path/'run', tmp_path, time_limit_hours=0.2)
    assert {'last.pt', 'model.pt', 'metrics.csv', 'metrics.json', 'history.png'} <= {p.name for p in (tmp_path/'run').iterdir()}
    history = pd.read_csv(tmp_path/'run'/'metrics.csv')
    assert history['val_gap'].notna().sum() == 1
    summary = json.loads((tmp_path/'run'/'metrics.json').read_text())
    assert summary['finished'] and summary['val_gap'] == pytest.approx(history['val_gap'].dropna().iloc[-1])

def test_training_kernel_stops_early_on_a_bad_parameter(gld, tmp_path):
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError, match="parameter 'time_limit_hours' must be"):
        run_kernel(gld, tmp_path/'run', tmp_path, time_limit_hours='soon')
    assert not (tmp_path/'run').exists()

def test_training_kernel_metadata():
    meta = json.loads((KERNEL/'kernel-metadata.json').read_text())
    assert meta['id'].endswith('/lmkkit-train') and meta['code_file'] == 'lmkkit-train.ipynb'
    assert (meta['kernel_type'], meta['language'], meta['is_private'], meta['enable_gpu'], meta['enable_internet']) == \
        ('notebook', 'python', True, True, False)
    assert meta['competition_sources'] == ['landmark-recognition-2021']
    nb = json.loads((KERNEL/meta['code_file']).read_text())
    assert [c for c in nb['cells'] if 'parameters' in c['metadata'].get('tags', [])]

def test_training_kernel_states_only_the_config_defaults():
    "A training-kernel parameter is None (the preset's), or the default of its TrainKernelParams / TrainConfig field."
    from lmkkit.kaggle import read_parameters
    from lmkkit.train import TrainKernelParams
    params = {n: p.value for n, p in read_parameters(KERNEL/'lmkkit-train.ipynb').items()}
    own = {f.name: getattr(TrainKernelParams(), f.name) for f in dataclasses.fields(TrainKernelParams)}
    config = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, value in params.items():
        if name in own: assert value == own[name], f"{name} = {value!r}, TrainKernelParams says {own[name]!r}"
        elif name == 'time_limit_hours': assert value < 12  # Kaggle's limit, less the time to save: the kernel's own
        elif name in config: assert value is None, f"{name} = {value!r}: leave it None (the preset's) or use overrides"
        else: assert name == 'lmkkit_src' and value is None, name
