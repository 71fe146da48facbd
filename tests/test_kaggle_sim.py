"""Kaggle simulated: the wheelhouse installs offline on an image that has only the declared baseline, and the three
kernels run through papermill from `/kaggle/working` with the inputs under `../input`, writing nothing else.

The simulated image is a fresh venv that sees only the baseline's distributions (`lmkkit.kaggle.BASELINE` and what
they need): a folder of links to them, taken from this environment (torch alone is gigabytes; the links cost
nothing), on the venv's path through a `.pth` file. pip finds them installed; what the install adds goes into the
venv itself, and the environment the links point into is never written (pip refuses to uninstall outside its
venv). The baseline packages this environment lacks (opencv-python, scikit-learn) are installed once into the
pytest cache, like the downloaded wheels.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from lmkkit import kaggle as lk
from lmkkit.model import create_model, save_checkpoint
from lmkkit.synth import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT/'kaggle_kernels'
TINY = dict(n_landmarks=6, n_unseen=2, n_families=2, train_per_landmark=5, index_per_landmark=3, test_per_landmark=2,
            n_train_nonlandmarks=10, n_index_nonlandmarks=4, n_test_nonlandmarks=6, image_size=64)
# The image's Python runs the notebook and pip: pip and the Jupyter kernel are part of the baseline too.
IMAGE_EXTRA = ('pip',)
MISSING_HERE = ('opencv-python', 'scikit-learn', 'joblib', 'threadpoolctl')  # baseline packages this env may lack
SIM_ENV = {'PYTHONPATH': '', 'PIP_CONFIG_FILE': os.devnull, 'PYTHONNOUSERSITE': '1', 'PIP_NO_INPUT': '1'}


def canon(name): return lk._canon(name)


def installed(paths) -> dict:
    "canonical name -> distribution, for the distributions found in `paths` (first one wins)."
    found = {}
    for d in metadata.distributions(path=[str(p) for p in paths]):
        found.setdefault(canon(d.metadata['Name']), d)
    return found


def closure(dists: dict, roots) -> list:
    "The installed distributions `roots` need, with every requirement whose marker holds here, recursively."
    seen, todo = {}, [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name, extras = canon(req.name), set(req.extras)
        if name not in dists or (name in seen and extras <= seen[name]): continue
        seen[name] = seen.get(name, set()) | extras
        for text in dists[name].requires or []:
            r = Requirement(text)
            if r.marker is None or any(r.marker.evaluate({'extra': e}) for e in ('', *extras)): todo.append(r)
    return [dists[n] for n in seen]


def link_view(view: Path, dists) -> None:
    "Link each distribution's top-level files and its .dist-info into `view` (a site directory)."
    view.mkdir(parents=True, exist_ok=True)
    for d in dists:
        base = Path(d.locate_file(''))
        tops = {Path(str(f)).parts[0] for f in d.files or [] if not str(f).startswith('..')}
        for top in tops:
            if not (view/top).exists() and (base/top).exists(): (view/top).symlink_to(base/top)


@pytest.fixture(scope='session')
def cache(request, tmp_path_factory) -> Path:
    "Downloads kept between runs in pytest's cache folder (a temporary one under `-p no:cacheprovider`)."
    store = getattr(request.config, 'cache', None)
    return Path(store.mkdir('lmkkit-kaggle-sim')) if store else tmp_path_factory.mktemp('cache')


@pytest.fixture(scope='session')
def image(cache, tmp_path_factory) -> Path:
    "A fresh venv whose only packages are the baseline's: the simulated Kaggle image. Returns its python."
    here = Path(sysconfig.get_paths()['purelib'])
    extra = cache/'baseline-extra'
    if not installed([here, extra]).keys() >= {canon(n) for n in MISSING_HERE}:
        subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target', str(extra), *MISSING_HERE],
                       check=True, capture_output=True)
    dists = installed([here, extra])
    root = tmp_path_factory.mktemp('image')
    link_view(root/'baseline', closure(dists, [*lk.BASELINE, *IMAGE_EXTRA]))
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(root/'venv')], check=True)
    python = root/'venv'/'bin'/'python'
    site = subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site)/'kaggle-image.pth').write_text(str(root/'baseline') + '\n')
    return python


def run(python, *args, **kw):
    return subprocess.run([str(python), *args], capture_output=True, text=True, env={**os.environ, **SIM_ENV}, **kw)


def venv_site(python) -> Path:
    return Path(run(python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])').stdout.strip())


@pytest.fixture(scope='session')
def wheelhouse(cache, tmp_path_factory) -> Path:
    "The real wheelhouse: dependency wheels downloaded once per requirements/baseline (pytest cache), lmkkit's built now."
    key = hashlib.sha256(repr((lk.BASELINE, (ROOT/'settings.ini').read_text().split('requirements =')[1]
                                .splitlines()[0], lk.DEFAULT_PLATFORMS)).encode()).hexdigest()[:12]
    deps = cache/f'wheelhouse-{key}'
    if not (deps/lk.WHEELHOUSE_LOCK).is_file():
        shutil.rmtree(deps, ignore_errors=True)
        lk.build_wheelhouse(cache/'building', owner='someone')
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
    python, seconds, added = kaggle_image
    assert {'lmkkit', 'timm', 'faiss-cpu', 'kornia', 'lightgbm', 'albumentations', 'opencv-python-headless', 'tqdm'} <= set(added)
    assert not {canon(b) for b in lk.BASELINE} & set(added)  # nothing of the image was replaced
    shipped = {canon(l.split('==')[0]) for l in (wheelhouse/lk.WHEELHOUSE_LOCK).read_text().splitlines() if '==' in l}
    assert set(added) - {'lmkkit'} <= shipped
    code = "import lmkkit, cv2, lmkkit.pipeline, lmkkit.verify, lmkkit.train; print(lmkkit.__file__)"
    res = run(python, '-c', code, cwd=tmp_path)  # not the checkout's folder, whose lmkkit/ would be imported
    assert res.returncode == 0, res.stderr[-3000:]
    assert str(venv_site(python)) in res.stdout  # the installed wheel, not a checkout


def test_install_cell_is_loud(image, tmp_path):
    "A wheelhouse that lacks a dependency stops with pip's own message; a missing wheelhouse with what ../input holds."
    bare = tmp_path/'bare'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(bare)], check=True)
    (venv_site(bare/'bin'/'python')/'kaggle-image.pth').write_text((venv_site(image)/'kaggle-image.pth').read_text())
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
