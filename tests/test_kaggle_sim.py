"""Kaggle simulated: the wheelhouse installs offline on the image as it is, and the three kernels run through
papermill from `/kaggle/working` with the inputs under `../input` (read-only), writing nothing else.

The image is `lmkkit.kaggle.KAGGLE_IMAGE`: a venv of its Python (3.12) holding exactly its recorded versions (torch
2.10, timm 1.0.26, numpy 2.0.2, pandas 2.2.2, OpenCV 4.13...), installed once from PyPI and kept in
`~/.cache/lmkkit` ($LMKKIT_CACHE): 8 GB, about 6 minutes the first time (3.9 GB downloaded in under a minute here,
the rest is pip unpacking), nothing after. PyPI's torch for Linux is the CUDA build with its nvidia-* wheels (PyTorch's
CPU-only index is not reachable from here or CI); it runs on the CPU like the dev venv's. Each session lays a fresh venv over it (a `.pth` adds
the image's site-packages), so the install cell writes into that venv and the cached image stays as recorded.
The image's Python comes from $LMKKIT_IMAGE_PYTHON, `python3.12` on PATH, or pyenv; without one the tests are
skipped, except under CI, where they fail.
"""
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from lmkkit import kaggle as lk
from lmkkit import wheelhouse as lw
from lmkkit.model import create_model, save_checkpoint
from lmkkit.synth import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT/'kaggle_kernels'
IMAGE = lk.KAGGLE_IMAGE
TINY = dict(n_landmarks=6, n_unseen=2, n_families=2, train_per_landmark=5, index_per_landmark=3, test_per_landmark=2,
            n_train_nonlandmarks=10, n_index_nonlandmarks=4, n_test_nonlandmarks=6, image_size=64)
SIM_ENV = {'PYTHONPATH': '', 'PIP_CONFIG_FILE': os.devnull, 'PYTHONNOUSERSITE': '1', 'PIP_NO_INPUT': '1'}


def canon(name): return lw._canon(Requirement(name).name)


def installed(paths) -> dict:
    "canonical name -> distribution, for the distributions found in `paths` (first one wins)."
    found = {}
    for d in metadata.distributions(path=[str(p) for p in paths]):
        found.setdefault(canon(d.metadata['Name']), d)
    return found


def image_python() -> str | None:
    "A CPython of the image's version: $LMKKIT_IMAGE_PYTHON, pythonX.Y on PATH, else pyenv's newest X.Y.*."
    pyenv = os.environ.get('PYENV_ROOT', os.path.expanduser('~/.pyenv'))
    found = [os.environ.get('LMKKIT_IMAGE_PYTHON'), shutil.which(f'python{IMAGE.python}'),
             *sorted(glob.glob(f'{pyenv}/versions/{IMAGE.python}.*/bin/python'), reverse=True)]
    for python in filter(None, found):
        res = subprocess.run([python, '-c', 'import sys; print("%d.%d" % sys.version_info[:2])'], capture_output=True, text=True)
        if res.returncode == 0 and res.stdout.strip() == IMAGE.python: return python
    return None


def image_requirements() -> list[str]:
    "What the simulated image installs: every recorded version; the newest fitting release where none is recorded."
    return list(IMAGE.baseline)


def build_image(cache: Path) -> Path:
    "The image's venv under `cache` (built once, marked complete); returns its python."
    key = hashlib.sha256(repr(image_requirements()).encode()).hexdigest()[:10]
    root = Path(cache)/f'kaggle-image-py{IMAGE.python}-{key}'
    if (root/'.complete').is_file(): return root/'bin'/'python'
    base = image_python()
    if base is None:
        why = (f"no Python {IMAGE.python} for the simulated Kaggle image: install one (pyenv install {IMAGE.python}) or "
               "set LMKKIT_IMAGE_PYTHON")
        pytest.fail(why) if os.environ.get('CI') else pytest.skip(why)
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([base, '-m', 'venv', str(root)], check=True)
    res = subprocess.run([str(root/'bin'/'python'), '-m', 'pip', 'install', '-q', '--disable-pip-version-check',
                          '--no-compile', *image_requirements()], capture_output=True, text=True)  # compiled on import
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    freeze = subprocess.run([str(root/'bin'/'python'), '-m', 'pip', 'list', '--format=freeze'], capture_output=True, text=True)
    (root/'image.txt').write_text(f"# python {IMAGE.python}\n" + freeze.stdout)
    (root/'.complete').write_text(IMAGE.source + '\n')
    return root/'bin'/'python'


@pytest.fixture(scope='session')
def cache(request, tmp_path_factory) -> Path:
    "Downloads kept between runs in pytest's cache folder (a temporary one under `-p no:cacheprovider`)."
    store = getattr(request.config, 'cache', None)
    return Path(store.mkdir('lmkkit-kaggle-sim')) if store else tmp_path_factory.mktemp('cache')


@pytest.fixture(scope='session')
def image_venv() -> Path:
    "The cached venv of the image (its python)."
    return build_image(Path(os.environ.get('LMKKIT_CACHE') or os.path.expanduser('~/.cache/lmkkit')))


def overlay(python: Path, image_python: Path) -> Path:
    "A fresh venv at `python`'s folder whose path ends with the image's site-packages (their .pth files included)."
    venv = python.parents[1]
    subprocess.run([str(image_python), '-m', 'venv', '--without-pip', str(venv)], check=True)
    image_site = run(image_python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])').stdout.strip()
    (venv_site(python)/'kaggle-image.pth').write_text(f"import site; site.addsitedir({image_site!r})\n")
    return python


@pytest.fixture(scope='session')
def image(image_venv, tmp_path_factory) -> Path:
    "A fresh venv over the image's packages: the simulated Kaggle image of one session. Returns its python."
    return overlay(tmp_path_factory.mktemp('image')/'venv'/'bin'/'python', image_venv)


def test_the_image_is_the_recorded_one(image):
    "The simulated image runs the recorded Python and versions (issue 22: not the dev venv's)."
    code = "import sys, json; from importlib.metadata import version as v; print(json.dumps([sys.version_info[:2], " \
           "{n: v(n) for n in %r}]))" % [n for n, ver in IMAGE.packages.items() if ver]
    res = run(image, '-c', code)
    assert res.returncode == 0, res.stderr[-2000:]
    python, versions = json.loads(res.stdout)
    assert '%d.%d' % tuple(python) == IMAGE.python
    assert {n: ver.split('+')[0] for n, ver in versions.items()} == {n: v for n, v in IMAGE.packages.items() if v}


def run(python, *args, **kw):
    return subprocess.run([str(python), *args], capture_output=True, text=True, env={**os.environ, **SIM_ENV}, **kw)


def venv_site(python) -> Path:
    return Path(run(python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])').stdout.strip())


@pytest.fixture(scope='session')
def freeze(image_venv, tmp_path_factory) -> Path:
    "The image's packages as `IMAGE_RECIPE` captures them in a kernel."
    out = tmp_path_factory.mktemp('freeze')/'image.txt'
    res = run(image_venv, '-c', lk.IMAGE_RECIPE.replace('/kaggle/working/image.txt', str(out)))
    assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.fixture(scope='session')
def wheelhouse(cache, freeze, tmp_path_factory) -> Path:
    "What `lmkkit kernels wheelhouse --image` builds from the freeze: its wheels kept in pytest's cache, lmkkit's built now."
    requirements = (ROOT/'settings.ini').read_text().split('requirements =')[1].splitlines()[0]
    deps = cache/f"wheelhouse-{hashlib.sha256(repr((freeze.read_text(), requirements)).encode()).hexdigest()[:12]}"
    if not (deps/lk.WHEELHOUSE_LOCK).is_file():
        shutil.rmtree(deps, ignore_errors=True)
        shutil.rmtree(cache/'building', ignore_errors=True)
        assert lk.main(['wheelhouse', str(cache/'building'), '--owner', 'someone', '--image', str(freeze)]) == 0
        (cache/'building').rename(deps)
    out = tmp_path_factory.mktemp('wh')/lk.WHEELHOUSE_SLUG
    shutil.copytree(deps, out, ignore=shutil.ignore_patterns('lmkkit-*.whl'))
    lk.build_lmkkit_wheel(out)
    assert lk.validate_dataset(out) == []
    return out


def install_cell(kernel='lmkkit-recognition') -> str:
    nb = nbformat.read(KERNELS/kernel/f'{kernel}.ipynb', as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == 'code')


@pytest.mark.parametrize('kernel', sorted(p.name for p in KERNELS.iterdir() if (p/'kernel-metadata.json').is_file()))
def test_every_kernel_installs_from_its_wheelhouse(kernel):
    assert install_cell(kernel) == lk.install_cell_source(), 'regenerate the install cell with lmkkit.kaggle.install_cell_source()'
    meta = json.loads((KERNELS/kernel/'kernel-metadata.json').read_text())
    assert [s for s in meta['dataset_sources'] if s.endswith('/' + lk.WHEELHOUSE_SLUG)], meta['dataset_sources']


def test_runtime_requirements_are_what_a_kernel_imports(wheelhouse):
    "The built wheel asks for no tooling and for no particular OpenCV distribution."
    import zipfile
    wheel = next(wheelhouse.glob('lmkkit-*.whl'))
    with zipfile.ZipFile(wheel) as z:
        text = z.read(next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))).decode()
    runtime = {canon(Requirement(l.split(':', 1)[1]).name) for l in text.splitlines()
               if l.startswith('Requires-Dist:') and 'extra ==' not in l}
    assert runtime == {'torch', 'torchvision', 'timm', 'faiss-cpu', 'kornia', 'lightgbm', 'albumentations', 'pillow',
                       'numpy', 'pandas', 'matplotlib', 'tqdm', 'fastcore'}
    assert 'Provides-Extra: kaggle' in text and 'Provides-Extra: notebooks' in text


@pytest.fixture(scope='session')
def kaggle_image(image, wheelhouse, tmp_path_factory):
    "The simulated image after the kernels' install cell ran once in it: (python, seconds, packages added)."
    site = venv_site(image)
    before = set(installed([site]))
    kaggle = tmp_path_factory.mktemp('kaggle')
    (kaggle/'input').mkdir(); (kaggle/'working').mkdir()
    (kaggle/'input'/lk.WHEELHOUSE_SLUG).symlink_to(wheelhouse)
    t0 = time.perf_counter()
    res = run(image, '-c', install_cell(), cwd=kaggle/'working')
    seconds = time.perf_counter() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    added = sorted(set(installed([site])) - before)
    print(f"\nsimulated image: installed {len(added)} packages in {seconds:.1f}s from a {lk._size(wheelhouse)} wheelhouse: "
          + ' '.join(added))
    return image, seconds, added


def test_install_adds_exactly_what_the_image_lacks(kaggle_image, wheelhouse, tmp_path):
    "The image lacks only faiss: the install adds it and lmkkit, and replaces nothing (timm 1.0.26 stays)."
    python, seconds, added = kaggle_image
    assert added == ['faiss-cpu', 'lmkkit']
    shipped = {canon(l.split('==')[0]) for l in (wheelhouse/lk.WHEELHOUSE_LOCK).read_text().splitlines() if '==' in l and not l.startswith('#')}
    assert set(added) - {'lmkkit'} <= shipped
    code = "import lmkkit, cv2, lmkkit.pipeline, lmkkit.verify, lmkkit.train; print(lmkkit.__file__)"
    res = run(python, '-c', code, cwd=tmp_path)  # not the checkout's folder, whose lmkkit/ would be imported
    assert res.returncode == 0, res.stderr[-3000:]
    assert str(venv_site(python)) in res.stdout  # the installed wheel, not a checkout


def test_swin_takes_other_sizes_on_the_images_timm(kaggle_image, tmp_path):
    "timm 1.0.26 swallows dynamic_img_size for Swin (1.0.31 takes it): lmkkit builds Swin with strict_img_size=False."
    code = ("import json, torch; from lmkkit.model import create_backbone\n"
            "bb = create_backbone('swin_tiny_patch4_window7_224').eval()\n"
            "with torch.no_grad(): print(json.dumps(list(bb.forward_features(torch.randn(1, 3, 288, 288)).shape)))")
    res = run(kaggle_image[0], '-c', code, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.splitlines()[-1]) == [1, 9, 9, 768]


def test_data_loading_workers_fork_quietly(kaggle_image, kaggle_data, tmp_path):
    "Python 3.12 warns at each fork() of a threaded process; lmkkit.data silences exactly that warning (01_data: why)."
    code = ("import torch; from pathlib import Path\n"
            "from lmkkit.data import ImageDataset, eval_transforms\n"
            f"paths = sorted(str(p) for p in Path({str(kaggle_data/'data'/'train')!r}).rglob('*.jpg'))[:8]\n"
            "torch.randn(300, 300) @ torch.randn(300, 300)  # torch's thread pool is running\n"
            "ds = ImageDataset(paths, None, eval_transforms(32), load_size=32)\n"
            "print(sum(len(b['image']) for b in torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)))")
    res = run(kaggle_image[0], '-W', 'default', '-c', code, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[-1] == '8' and 'fork()' not in res.stderr, res.stderr[-2000:]


def test_wheelhouse_for_the_freeze_of_the_image(freeze, wheelhouse):
    "The freeze (IMAGE_RECIPE) gives the image's Python and versions; the wheelhouse built for it ships only faiss."
    image = lk.read_image(freeze)
    assert (image.python, image.packages['timm'], image.packages['torch']) == (IMAGE.python, '1.0.26', '2.10.0')
    assert sorted(p.name.split('-')[0] for p in wheelhouse.glob('*.whl')) == ['faiss_cpu', 'lmkkit']
    assert f'CPython {IMAGE.python}' in (wheelhouse/lk.WHEELHOUSE_LOCK).read_text()


def test_install_cell_is_loud(image_venv, tmp_path):
    "A wheelhouse that lacks a dependency stops with pip's own message; a missing wheelhouse with what ../input holds."
    bare = tmp_path/'bare'
    overlay(bare/'bin'/'python', image_venv)
    (tmp_path/'input'/'lmkkit-wheelhouse').mkdir(parents=True); (tmp_path/'working').mkdir()
    lk.build_lmkkit_wheel(tmp_path/'input'/'lmkkit-wheelhouse')
    res = run(bare/'bin'/'python', '-c', install_cell(), cwd=tmp_path/'working')
    assert res.returncode == 1
    assert 'RuntimeError: pip could not install lmkkit from ../input/lmkkit-wheelhouse:' in res.stderr
    assert 'No matching distribution found for' in res.stderr
    shutil.rmtree(tmp_path/'input'/'lmkkit-wheelhouse'); (tmp_path/'input'/'lmkkit-wheelhouse-v2').mkdir()
    res = run(bare/'bin'/'python', '-c', install_cell(), cwd=tmp_path/'working')
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        f"RuntimeError: lmkkit is not installed and no wheelhouse (a folder with lmkkit-*.whl) is attached: ../input (from "
        f"{tmp_path/'working'}) holds ['lmkkit-wheelhouse-v2']; attach <owner>/lmkkit-wheelhouse (dataset_sources) or build "
        "it with `lmkkit kernels wheelhouse`")


# --- the three kernels from a simulated /kaggle/working ---------------------------------------------------------------

def kaggle_layout(root: Path, wheelhouse: Path, data: Path, checkpoint: Path) -> Path:
    "`root/input/<slug>/...` (read-only) and `root/working`, as Kaggle lays out a kernel with these sources."
    inp = root/'input'
    shutil.copytree(wheelhouse, inp/lk.WHEELHOUSE_SLUG)
    for slug in ('landmark-recognition-2021', 'landmark-retrieval-2021'): shutil.copytree(data, inp/slug)
    (inp/lk.WEIGHTS_SLUG).mkdir()
    shutil.copy(checkpoint, inp/lk.WEIGHTS_SLUG/'model.pt')
    for p in [*inp.rglob('*'), inp]: p.chmod(p.stat().st_mode & ~0o222)  # read-only (root ignores it: see snapshot)
    (root/'working').mkdir()
    return root


def snapshot(root: Path) -> dict:
    "Every path under `root` outside `working/`, with size and modification time."
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob('*')
            if p.relative_to(root).parts[0] != 'working'}


@pytest.fixture(scope='session')
def sim_kernel(kaggle_image, tmp_path_factory):
    "A Jupyter kernel spec that starts the simulated image's Python (papermill runs here, the notebook there)."
    python = kaggle_image[0]
    spec = tmp_path_factory.mktemp('jupyter')/'kernels'/'kaggle-sim'
    spec.mkdir(parents=True)
    (spec/'kernel.json').write_text(json.dumps({'argv': [str(python), '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
                                                'display_name': 'kaggle-sim', 'language': 'python', 'env': SIM_ENV}))
    return spec.parents[1]


@pytest.fixture(scope='session')
def kaggle_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('kdata')
    make_synthetic(root/'data', seed=0, verbose=False, **TINY)
    save_checkpoint(root/'model.pt', create_model('test_resnet', embedding_size=16, head=None), None,
                    extra={'train_config': {'stages': [[32, 1]]}})
    return root


KERNEL_RUNS = {  # kernel: (parameters, files it must write in working/)
    'lmkkit-recognition': (dict(image_size=32, batch_size=16, verify_top_n=2, device='cpu', verbose=False),
                           ['submission.csv', 'metrics.json']),
    'lmkkit-retrieval': (dict(image_size=32, batch_size=16, verify_top_n=2, device='cpu', verbose=False),
                         ['submission.csv', 'metrics.json']),
    'lmkkit-train': (dict(out_dir='run', preset='demo', stages=[[32, 1]], batch_size=8, num_workers=0,
                          overrides=dict(val_max_index=32)), ['run/model.pt', 'run/metrics.json']),
}


@pytest.mark.parametrize('kernel', sorted(KERNEL_RUNS))
def test_kernel_runs_as_on_kaggle(kernel, sim_kernel, wheelhouse, kaggle_data, tmp_path, monkeypatch):
    import papermill as pm
    monkeypatch.setenv('JUPYTER_PATH', str(sim_kernel))
    root = kaggle_layout(tmp_path/'kaggle', wheelhouse, kaggle_data/'data', kaggle_data/'model.pt')
    before = snapshot(root)
    params, outputs = KERNEL_RUNS[kernel]
    try:
        pm.execute_notebook(str(KERNELS/kernel/f'{kernel}.ipynb'), str(root/'working'/'__notebook__.ipynb'),
                            parameters=params, kernel_name='kaggle-sim', cwd=str(root/'working'), progress_bar=False)
    finally:
        for p in root.rglob('*'): p.chmod(p.stat().st_mode | 0o200)  # let pytest clean up
    assert snapshot(root) == before  # nothing written outside working/
    for name in outputs: assert (root/'working'/name).is_file(), name
    if kernel != 'lmkkit-train':
        from lmkkit.metrics import validate_submission
        track = kernel.split('-')[1]
        assert validate_submission(root/'working'/'submission.csv')[0] == track
