"""Kaggle as it is now (issue 22): the kernels ask for T4 x2 and refuse a P100, a GPU its torch cannot use falls back
to the CPU, extraction and kNN use every device, inputs are found by their files under either mount layout, the
cache stays out of the saved working folder, and the rehearsal projects for T4 x2."""
import contextlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from lmkkit import kaggle as lk
from lmkkit import wheelhouse as lw
from lmkkit.model import create_model, save_checkpoint
from lmkkit.synth import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
KERNELS = sorted(p for p in (ROOT/'kaggle_kernels').glob('*') if (p/'kernel-metadata.json').is_file())
TINY = dict(n_landmarks=6, n_unseen=2, n_families=2, train_per_landmark=5, index_per_landmark=3, test_per_landmark=2,
            n_train_nonlandmarks=10, n_index_nonlandmarks=4, n_test_nonlandmarks=6, image_size=64)
FAST = dict(image_size=32, batch_size=16, verify_top_n=2, k=5, retrieval_k=20, verbose=False, lgbm_folds=2, lgbm_rounds=10)
CU128 = ['sm_70', 'sm_75', 'sm_80', 'sm_86', 'sm_90', 'sm_100', 'sm_120', 'compute_120']  # Kaggle's torch: no sm_60


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "A tiny synthetic GLDv2 folder and an untrained tiny checkpoint."
    root = tmp_path_factory.mktemp('now')
    make_synthetic(root/'data', seed=0, verbose=False, **TINY)
    save_checkpoint(root/'model.pt', create_model('test_resnet', embedding_size=16, head=None), None,
                    extra={'train_config': {'stages': [[32, 1]]}})
    return root


def fake_gpus(monkeypatch, capability, n=1, archs=CU128):
    "torch sees `n` GPUs of compute `capability` and was built for `archs` (nothing runs on them: tests stay on the CPU)."
    for name, fn in dict(is_available=lambda: True, device_count=lambda: n, get_arch_list=lambda: archs,
                         get_device_capability=lambda i=0: capability, get_device_name=lambda i=0: 'Tesla P100-PCIE-16GB').items():
        monkeypatch.setattr(torch.cuda, name, fn)


# 1. machine shape
@pytest.mark.parametrize('folder', KERNELS, ids=[p.name for p in KERNELS])
def test_shipped_kernels_ask_for_t4x2(folder):
    "NvidiaTeslaT4 is the kaggle CLI's id of 'GPU T4 x2' (kaggle-cli PR #1198, kaggle 2.2 `--accelerator` help)."
    meta = json.loads((folder/'kernel-metadata.json').read_text())
    assert meta['machine_shape'] == lk.DEFAULT_MACHINE_SHAPE == 'NvidiaTeslaT4'
    assert lk.validate_kernel(folder) == []


def test_p100_kernel_is_refused_in_one_line(tmp_path, capsys):
    folder = Path(shutil.copytree(KERNELS[0], tmp_path/KERNELS[0].name))
    meta = json.loads((folder/'kernel-metadata.json').read_text())
    (folder/'kernel-metadata.json').write_text(json.dumps({**meta, 'machine_shape': 'NvidiaTeslaP100'}))
    problems = lk.validate_kernel(folder)
    assert len(problems) == 1 and '\n' not in problems[0], problems
    assert 'no P100 (sm_60) kernels' in problems[0] and '"NvidiaTeslaT4" (T4 x2) or "NvidiaL4"' in problems[0]
    assert lk.main(['validate', str(folder)]) == 1
    assert 'NvidiaTeslaP100' in capsys.readouterr().out
    (folder/'kernel-metadata.json').write_text(json.dumps({k: v for k, v in meta.items() if k != 'machine_shape'}))
    assert lk.validate_kernel(folder)[0].startswith('enable_gpu without machine_shape')  # Kaggle's choice: maybe a P100


def test_machine_shape_is_a_parameter(tmp_path, capsys):
    folder = Path(shutil.copytree(KERNELS[0], tmp_path/KERNELS[0].name))
    assert lk.main(['push', str(folder), '--dry-run', '--machine-shape', 'NvidiaL4']) is not None
    assert '"machineShape": "NvidiaL4"' in capsys.readouterr().out  # the request kaggle would send
    assert json.loads((folder/'kernel-metadata.json').read_text())['machine_shape'] == 'NvidiaTeslaT4'  # a copy was pushed
    assert lk.main(['shape', 'NvidiaL4', str(folder)]) == 0
    assert json.loads((folder/'kernel-metadata.json').read_text())['machine_shape'] == 'NvidiaL4'
    assert lk.validate_kernel(folder) == []


def test_a_gpu_its_torch_cannot_use_falls_back_to_the_cpu(world, tmp_path, monkeypatch, capsys):
    "A P100 under a cu128 torch: one line at the start, then the whole run on the CPU (on main: dies at the first CUDA use)."
    from lmkkit.core import _say_once
    from lmkkit.pipeline import run_inference
    _say_once.cache_clear()
    fake_gpus(monkeypatch, (6, 0))
    res = run_inference(data_dir=str(world/'data'), checkpoint=str(world/'model.pt'), out_dir=str(tmp_path), track='retrieval',
                        cache_dir=str(tmp_path/'cache'), public_run='yes', **FAST)
    lines = [l for l in capsys.readouterr().err.splitlines() if 'cannot run this torch' in l]
    assert len(lines) == 1 and 'sm_60' in lines[0] and 'running on the CPU instead' in lines[0], lines
    assert ' on cpu;' in res.timeline.set_index('step').note['load_model']
    assert res.submission.is_file()


def test_usable_gpus_are_all_used(monkeypatch):
    "T4 x2: both devices; an L4 runs the sm_86 cubins; a P100 none."
    from lmkkit.core import cuda_devices, run_devices
    fake_gpus(monkeypatch, (7, 5), n=2)
    assert run_devices('auto') == ['cuda:0', 'cuda:1'] and run_devices('cuda:1') == ['cuda:1']
    fake_gpus(monkeypatch, (8, 9), archs=['sm_80', 'sm_86'])
    assert cuda_devices() == ['cuda:0']
    fake_gpus(monkeypatch, (6, 0), n=2)
    assert cuda_devices() == [] and run_devices('auto') == ['cpu']


# 2. both GPUs
def test_extraction_shards_over_two_devices(world, tmp_path):
    "Two CPU 'devices' (two replicas, two threads) give the single device's embeddings, counts and cache."
    from lmkkit.data import list_ids, paths_for
    from lmkkit.embed import Embedder, shard_rows
    from lmkkit.model import load_checkpoint
    ids = list_ids(world/'data', 'index')
    paths = paths_for(world/'data', 'index', ids)
    model = load_checkpoint(world/'model.pt')[0]
    one = Embedder(model, world/'model.pt', tmp_path/'one', 32, batch_size=4, num_workers=0)(ids, paths)
    two = Embedder(model, world/'model.pt', tmp_path/'two', 32, batch_size=4, num_workers=0, devices=['cpu', 'cpu'])(ids, paths)
    np.testing.assert_allclose(two.emb, one.emb, atol=1e-6)
    assert (two.ok == one.ok).all() and two.reasons == one.reasons and one.ok.any()
    assert sorted(np.concatenate(shard_rows(len(ids), 2, 4)).tolist()) == list(range(len(ids)))


def test_knn_splits_the_index_over_devices():
    from lmkkit.search import knn
    rng = np.random.default_rng(0)
    x = rng.standard_normal((301, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[7] = np.nan
    for backend in ('torch', 'faiss', 'numpy'):
        one, two = knn(x[:20], x, 10, backend=backend), knn(x[:20], x, 10, backend=backend, devices=['cpu', 'cpu'])
        assert (two.idx == one.idx).all(), backend


# 5. inputs found, outputs small
def kaggle_mounts(root: Path, world: Path, wheelhouse: bool = False) -> Path:
    "Kaggle's newer layout: /kaggle/input/competitions/<slug>/ and /kaggle/input/datasets/<owner>/<slug>/, renamed slugs."
    comp = root/'kaggle'/'input'/'competitions'/'landmark-retrieval-2021-rerun'
    comp.parent.mkdir(parents=True)
    shutil.copytree(world/'data', comp)
    weights = root/'kaggle'/'input'/'datasets'/'someone'/'my-weights-v2'
    weights.mkdir(parents=True)
    shutil.copy(world/'model.pt', weights/'model.pt')
    if wheelhouse:
        (root/'kaggle'/'input'/'datasets'/'someone'/'wh').mkdir()
        (root/'kaggle'/'input'/'datasets'/'someone'/'wh'/'lmkkit-0.1.0-py3-none-any.whl').write_bytes(b'')
    (root/'kaggle'/'working').mkdir()
    return root/'kaggle'


def test_install_cell_finds_the_wheelhouse_by_its_wheel(tmp_path, world, monkeypatch):
    kaggle = kaggle_mounts(tmp_path, world, wheelhouse=True)
    monkeypatch.setenv(lk.INPUT_ROOTS_ENV, os.pathsep.join([str(tmp_path/'nothing'), str(kaggle/'input')]))
    calls = []
    monkeypatch.setattr(subprocess, 'run', lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0, 'ok', ''))
    monkeypatch.setenv('LMKKIT_KERNEL_START', '0')
    with contextlib.redirect_stdout(io.StringIO()): exec(lk.install_cell_source(), {})
    assert calls and calls[0][-2] == str(kaggle/'input'/'datasets'/'someone'/'wh')


def test_inference_kernel_finds_its_inputs_and_keeps_the_cache_out_of_working(world, tmp_path, monkeypatch):
    "The retrieval kernel with no data_dir or checkpoint given, on Kaggle's newer mount layout, as a Kaggle run."
    import papermill as pm
    kaggle = kaggle_mounts(tmp_path, world)
    monkeypatch.setenv(lk.INPUT_ROOTS_ENV, str(kaggle/'input'))
    monkeypatch.setenv('KAGGLE_KERNEL_RUN_TYPE', 'Batch')  # lmkkit.core.on_kaggle
    monkeypatch.setenv('TMPDIR', str(tmp_path/'tmp'))  # no /kaggle/temp here: the cache goes to the temp folder
    (tmp_path/'tmp').mkdir()
    name = 'lmkkit-retrieval'
    pm.execute_notebook(str(ROOT/'kaggle_kernels'/name/f'{name}.ipynb'), str(tmp_path/'run.ipynb'), cwd=str(kaggle/'working'),
                        parameters=dict(device='cpu', verbose=False, overrides=dict(FAST, public_run='yes')),
                        kernel_name='python3', progress_bar=False)
    from lmkkit.metrics import validate_submission
    assert validate_submission(kaggle/'working'/'submission.csv')[0] == 'retrieval'  # where the competition reads it
    assert not (kaggle/'working'/'cache').exists()
    assert list((tmp_path/'tmp'/'lmkkit-cache').glob('*/*/emb.npy'))


def test_kernel_paths_are_found_not_fixed():
    "No kernel names a fixed input slug; the training kernel writes under the working folder."
    params = {k.name: {n: p.value for n, p in lk.read_parameters(k/f'{k.name}.ipynb').items()} for k in KERNELS}
    for kernel, p in params.items():
        assert p['data_dir'] is None, kernel
        assert not any(isinstance(v, str) and '../input' in v for v in p.values()), kernel
    assert params['lmkkit-recognition']['checkpoint'] is None and params['lmkkit-recognition']['out_dir'] == '.'
    assert params['lmkkit-train']['out_dir'] == 'run'


# 3 (part): lmkkit's own requirements against the image's versions
def test_wheelhouse_checks_lmkkits_own_requirements_against_the_image(tmp_path, monkeypatch):
    "An image freeze with timm 1.0.26 against lmkkit's timm>=1.0.31: the build stops, not the kernel's install cell."
    fake = {'lmkkit': ['timm>=1.0.31', 'kornia>=0.7'], 'timm': ['torch'], 'kornia': ['torch>=2.5.1'], 'torch': []}
    resolved = {n: {'metadata': {'name': n, 'version': '0.1.0' if n == 'lmkkit' else '1.0', 'requires_dist': r}}
                for n, r in fake.items()}
    monkeypatch.setattr(lw, 'build_lmkkit_wheel', lambda out, *a, **k: (Path(out)/'lmkkit-0.1.0-py3-none-any.whl').touch())
    monkeypatch.setattr(lw, 'resolve', lambda *a, **k: resolved)
    monkeypatch.setattr(lw, 'download_wheels', lambda *a, **k: pytest.fail('nothing is downloaded for a wheelhouse that cannot install'))
    with pytest.raises(lk.KernelError, match=r"lmkkit 0.1.0 needs timm>=1.0.31, the image has timm==1.0.26; lower lmkkit's"):
        lk.build_wheelhouse(tmp_path/'wh', baseline=('torch==2.10.0', 'timm==1.0.26'), owner='someone')


# 3: the recorded image is the wheelhouse's target, and lmkkit fits its versions
def test_the_recorded_image_is_the_wheelhouses_default_target():
    "Python 3.12 and the image's pins by default; lmkkit's own requirements accept every recorded version (timm 1.0.26)."
    import inspect
    from packaging.requirements import Requirement
    image, params = lk.KAGGLE_IMAGE, inspect.signature(lw.build_wheelhouse).parameters
    assert (params['python_version'].default, params['baseline'].default) == (image.python, image.baseline)
    assert image.python == '3.12' and 'timm==1.0.26' in image.baseline and 'faiss-cpu' not in image.packages
    line = next(l for l in (ROOT/'settings.ini').read_text().splitlines() if l.startswith('requirements ='))
    reqs = [Requirement(r) for r in line.split('=', 1)[1].split()]
    misfits = [f"{r} against {image.packages[lw._canon(r.name)]}" for r in reqs
               if image.packages.get(lw._canon(r.name)) and not r.specifier.contains(image.packages[lw._canon(r.name)])]
    assert misfits == []  # a baseline package is never shipped: a misfit stops the kernel's install cell


def test_read_image_takes_the_python_of_the_freeze(tmp_path):
    (tmp_path/'image.txt').write_text("# python 3.13 ('glibc', '2.35')\ntimm==1.0.26\nkornia @ file:///tmp/kornia.whl\n")
    image = lk.read_image(tmp_path/'image.txt')
    assert (image.python, image.packages, image.baseline) == ('3.13', {'timm': '1.0.26', 'kornia': ''}, ('timm==1.0.26', 'kornia'))
    (tmp_path/'old.txt').write_text("timm==1.0.26\n")
    assert lk.read_image(tmp_path/'old.txt').python == lk.KAGGLE_IMAGE.python
    assert "'--format=freeze'" in lk.IMAGE_RECIPE and '# python' in lk.IMAGE_RECIPE


def test_swin_takes_any_size_where_timm_ignores_dynamic_img_size(monkeypatch):
    "timm 1.0.26 (the image's) swallows dynamic_img_size for Swin: lmkkit builds it with strict_img_size=False instead."
    import timm
    from lmkkit import model as lm
    real = timm.create_model
    monkeypatch.setattr(timm, 'create_model', lambda name, **kw: real(name, **{k: v for k, v in kw.items() if k != 'dynamic_img_size'}))
    with torch.device('meta'):
        bb = lm._timm_backbone('swin_tiny_patch4_window7_224')
        assert tuple(bb.forward_features(torch.empty(1, 3, 288, 288)).shape) == (1, 9, 9, 768)
