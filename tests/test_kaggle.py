"lmkkit.kaggle end to end: kernel folders (valid and each broken rule), push dry run, wheelhouse, public-run detection."
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lmkkit import kaggle as lk
from lmkkit import publish
from lmkkit.core import ConfigError

ROOT = Path(__file__).resolve().parents[1]

PARAMS = "data_dir = '../input/landmark-recognition-2021'  # competition data\nk = 10  # neighbours\n"


def write_notebook(path, params=PARAMS, tags=('parameters',), extra_tagged=0):
    cells = [nbformat.v4.new_code_cell(params, metadata={'tags': list(tags)})]
    cells += [nbformat.v4.new_code_cell('x = 1  # more', metadata={'tags': ['parameters']}) for _ in range(extra_tagged)]
    cells.append(nbformat.v4.new_code_cell('print(data_dir, k)'))
    nbformat.write(nbformat.v4.new_notebook(cells=cells), str(path))


def make_kernel(folder, notebook=None, **meta):
    folder.mkdir(parents=True, exist_ok=True)
    base = dict(id='someone/lmkkit-retrieval', title='lmkkit-retrieval', code_file='lmkkit-retrieval.ipynb',
                language='python', kernel_type='notebook', is_private=True, enable_gpu=True, machine_shape='NvidiaTeslaT4',
                enable_internet=False,
                dataset_sources=['someone/lmkkit-wheelhouse'], competition_sources=['landmark-retrieval-2021'])
    base = {k: v for k, v in {**base, **meta}.items() if v is not None}
    (folder / 'kernel-metadata.json').write_text(json.dumps(base))
    (notebook or write_notebook)(folder / 'lmkkit-retrieval.ipynb')
    return folder


def test_valid_kernel(tmp_path, capsys):
    folder = make_kernel(tmp_path / 'k')
    assert lk.validate_kernel(folder) == []
    assert lk.main(['validate', str(folder)]) == 0
    assert capsys.readouterr().out.strip() == f'{folder}: ok'


@pytest.mark.parametrize('meta,expected', [
    (dict(title='kern'), 'Title must be at least five characters'),
    (dict(code_file=None), 'A source file must be specified'),
    (dict(id=None), 'ID or slug must be specified'),
    (dict(id='someone/abc'), 'Kernel slug must be at least five characters'),
    (dict(language='sql'), 'A valid language must be specified'),
    (dict(kernel_type='dashboard'), 'A valid kernel type must be specified'),
    (dict(dataset_sources=['wheelhouse']), "Dataset must be specified in the form"),
    (dict(kernel_sources=['me']), 'Kernel must be specified in the form'),
    (dict(enable_gpu='yes'), 'Invalid boolean value: yes'),
    (dict(keywords=[7]), 'category_ids must contain only items of type str'),
    (dict(enable_internet=True), 'enable_internet must be false'),
    (dict(enable_internet=None), 'enable_internet must be false'),
    (dict(enable_gpu=None, machine_shape=None), 'enable_gpu must be true'),
    (dict(machine_shape='NvidiaTeslaP100'), 'no P100 (sm_60) kernels'),
    (dict(machine_shape=None), 'enable_gpu without machine_shape'),
    (dict(competition_sources=[]), 'competition_sources is empty'),
    (dict(docker_image_pinning_type='original'), "use 'latest'"),
])
def test_each_broken_metadata_rule(tmp_path, capsys, meta, expected):
    folder = make_kernel(tmp_path / 'k', **meta)
    problems = lk.validate_kernel(folder)
    assert any(expected in p for p in problems), problems
    assert lk.main(['validate', str(folder)]) == 1
    assert expected in capsys.readouterr().out


def test_gpu_rule_can_be_lifted(tmp_path):
    folder = make_kernel(tmp_path / 'k', enable_gpu=False, machine_shape=None)
    assert lk.validate_kernel(folder, require_gpu=False) == []
    assert lk.validate_kernel(make_kernel(tmp_path / 'shape', enable_gpu=None, machine_shape='NvidiaTeslaT4')) == []


@pytest.mark.parametrize('kwargs,expected', [
    (dict(tags=()), "0 cells tagged 'parameters'"),
    (dict(extra_tagged=1), "2 cells tagged 'parameters'"),
    (dict(params="k = 10\n"), "'k' has no inline `# comment`"),
    (dict(params="import os  # no\nk = 10  # neighbours\n"), 'found `import os`'),
    (dict(params="k = int('10')  # neighbours\n"), 'is not a literal'),
])
def test_parameters_cell_rules(tmp_path, kwargs, expected):
    folder = make_kernel(tmp_path / 'k', notebook=lambda p: write_notebook(p, **kwargs))
    problems = lk.validate_kernel(folder)
    assert len(problems) == 1 and expected in problems[0], problems


def test_missing_metadata_and_code(tmp_path):
    (tmp_path / 'empty').mkdir()
    assert 'kernel-metadata.json not found' in lk.validate_kernel(tmp_path / 'empty')[0]
    folder = make_kernel(tmp_path / 'k', code_file='gone.ipynb')
    assert any("code_file 'gone.ipynb' not found" in p for p in lk.validate_kernel(folder))


@pytest.mark.parametrize('name,text', [
    ('kaggle.json', '{"username": "me", "key": "0123456789abcdef0123456789abcdef"}'),
    ('setup.sh', 'export KAGGLE_KEY=0123456789abcdef0123456789abcdef\n'),
    ('env.py', "os.environ['KAGGLE_API_TOKEN'] = 'KGAT_0123456789abcdef0123'\n"),
])
def test_credentials_refuse_push(tmp_path, capsys, monkeypatch, name, text):
    folder = make_kernel(tmp_path / 'k')
    (folder / name).write_text(text)
    monkeypatch.setattr(publish, 'authenticated_api', lambda: pytest.fail('must not authenticate'))
    with pytest.raises(lk.KernelError) as e:
        lk.main(['push', str(folder)])
    assert name in str(e.value) and 'credential' in str(e.value)


def test_push_dry_run_sends_nothing(tmp_path, capsys, monkeypatch):
    folder = make_kernel(tmp_path / 'k')
    monkeypatch.setattr(publish, 'authenticated_api', lambda: pytest.fail('a dry run must not authenticate'))
    assert lk.main(['push', str(folder), '--dry-run']) == 0
    out = capsys.readouterr().out
    head, code_line = out.split('\n', 1)[0], out.strip().splitlines()[-1]
    assert head == f'dry run: would push {folder} (nothing sent)'
    fields = json.loads(out[out.index('{'):out.rindex('}') + 1])
    assert fields == {'slug': 'someone/lmkkit-retrieval', 'newTitle': 'lmkkit-retrieval', 'language': 'python',
                      'kernelType': 'notebook', 'isPrivate': True, 'enableGpu': True, 'enableInternet': False,
                      'enableTpu': False, 'datasetDataSources': ['someone/lmkkit-wheelhouse'],
                      'competitionDataSources': ['landmark-retrieval-2021'], 'machineShape': 'NvidiaTeslaT4'}
    assert code_line.startswith('code_file: lmkkit-retrieval.ipynb (') and code_line.endswith(' bytes sent)')


def test_import_reads_no_real_credentials(tmp_path):
    "A user's real kaggle.json is not read (nor a notice printed) when lmkkit imports kaggle for its checks."
    home = tmp_path / 'home'
    (home / '.kaggle').mkdir(parents=True)
    (home / '.kaggle' / 'kaggle.json').write_text('{"username": "real-user", "key": "%s"}' % ('f' * 32))
    code = ("from lmkkit.kaggle import offline_api; api = offline_api(); import kaggle, os;"
            "print(kaggle.api.config_values.get('username'), api.config_values['username'], os.environ['HOME'])")
    env = {**os.environ, 'HOME': str(home), 'PYTHONPATH': str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith('KAGGLE_')}
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ['lmkkit-offline', 'lmkkit-offline', str(home)]


def test_wheelhouse_without_downloads(tmp_path, capsys):
    out = tmp_path / 'wh'
    assert lk.main(['wheelhouse', str(out), '--owner', 'someone', '--no-packages']) == 0
    assert sorted(p.name for p in out.iterdir()) == ['.lmkkit-owner', 'constraints.txt', 'dataset-metadata.json',
                                                     'lmkkit-0.1.0-py3-none-any.whl']
    assert json.loads((out / 'dataset-metadata.json').read_text())['id'] == 'someone/lmkkit-wheelhouse'
    assert lk.validate_dataset(out) == []
    (out / 'kaggle.json').write_text('{}')
    assert lk.validate_dataset(out)[0].startswith('kaggle.json: credential file')


def test_install_cell():
    "The cell the kernels run; its behaviour on a simulated image is in test_kaggle_sim.py."
    cell = lk.install_cell_source('someone/lmkkit-wheelhouse')
    assert "('../input', '/kaggle/input')" in cell and "n.startswith('lmkkit-') and n.endswith('.whl')" in cell
    assert "'install', '--no-index', '--find-links', _wheelhouse, 'lmkkit'" in cell
    compile(cell, 'cell', 'exec')


SLUG_CASES = [  # (field, what a user writes, the slug the message asks for)
    ('competition_sources', 'c/landmark-recognition-2021', 'landmark-recognition-2021'),
    ('competition_sources', 'https://www.kaggle.com/c/landmark-recognition-2021', 'landmark-recognition-2021'),
    ('competition_sources', 'https://www.kaggle.com/competitions/landmark-retrieval-2021/data', 'landmark-retrieval-2021'),
    ('dataset_sources', 'datasets/someone/lmkkit-weights', 'someone/lmkkit-weights'),
    ('dataset_sources', 'https://www.kaggle.com/datasets/someone/lmkkit-weights', 'someone/lmkkit-weights'),
    ('dataset_sources', 'www.kaggle.com/datasets/someone/lmkkit-weights/versions/4', 'someone/lmkkit-weights/4'),
    ('kernel_sources', 'code/someone/lmkkit-train', 'someone/lmkkit-train'),
    ('kernel_sources', 'https://www.kaggle.com/code/someone/lmkkit-train', 'someone/lmkkit-train'),
    ('kernel_sources', 'https://kaggle.com/someone/lmkkit-train/', 'someone/lmkkit-train'),
]


@pytest.mark.parametrize('field,given,slug', SLUG_CASES)
def test_sources_must_be_bare_slugs(tmp_path, capsys, field, given, slug):
    "kaggle's checks pass these, the push succeeds and Kaggle drops the input (kaggle-cli #377, #433, #464)."
    folder = make_kernel(tmp_path / 'k', **{field: [given]})
    expected = f'{field}[0] {given!r} is not a bare slug (Kaggle would silently drop this input): write "{slug}"'
    assert lk.validate_kernel(folder)[-1] == expected
    assert lk.main(['validate', str(folder)]) == 1
    assert f'  - {expected}' in capsys.readouterr().out
    assert lk.validate_kernel(make_kernel(tmp_path / 'ok', **{field: [slug]})) == []


def test_owner_rewrites_ids_and_our_datasets(tmp_path, capsys):
    folder = make_kernel(tmp_path / 'k', id='lmkkit/lmkkit-retrieval',
                         dataset_sources=['lmkkit/lmkkit-wheelhouse', 'lmkkit/lmkkit-weights', 'lmkkit/other-data'])
    assert lk.main(['owner', 'ana', str(folder)]) == 0
    meta = json.loads((folder / 'kernel-metadata.json').read_text())
    assert meta['id'] == 'ana/lmkkit-retrieval'
    assert meta['dataset_sources'] == ['ana/lmkkit-wheelhouse', 'ana/lmkkit-weights', 'lmkkit/other-data']
    assert capsys.readouterr().out.startswith(f"{folder}: id ana/lmkkit-retrieval")
    assert lk.validate_kernel(folder) == []


def test_push_under_another_owner_leaves_the_folder(tmp_path, capsys, monkeypatch):
    folder = make_kernel(tmp_path / 'k')
    before = (folder / 'kernel-metadata.json').read_text()
    monkeypatch.setattr(publish, 'authenticated_api', lambda: pytest.fail('a dry run must not authenticate'))
    assert lk.main(['push', str(folder), '--owner', 'ana', '--dry-run']) == 0
    out = capsys.readouterr().out
    fields = json.loads(out[out.index('{'):out.rindex('}') + 1])
    assert fields['slug'] == 'ana/lmkkit-retrieval' and fields['datasetDataSources'] == ['ana/lmkkit-wheelhouse']
    assert (folder / 'kernel-metadata.json').read_text() == before


def test_weights_dataset(tmp_path, capsys):
    from lmkkit.model import create_model, save_checkpoint
    save_checkpoint(tmp_path / 'best.pt', create_model('test_resnet', embedding_size=8, head=None), None)
    (tmp_path / 'disk.pth').write_bytes(b'disk')
    (tmp_path / 'lightglue.pth').write_bytes(b'lightglue')
    out = tmp_path / 'weights'
    assert lk.main(['weights', str(out), '--checkpoint', str(tmp_path / 'best.pt'), '--file', str(tmp_path / 'disk.pth'),
                    '--file', str(tmp_path / 'lightglue.pth'), '--owner', 'ana']) == 0
    assert sorted(p.name for p in out.iterdir()) == ['.lmkkit-owner', 'dataset-metadata.json', 'disk.pth', 'lightglue.pth', 'model.pt']
    meta = json.loads((out / 'dataset-metadata.json').read_text())
    assert meta['id'] == 'ana/lmkkit-weights' and meta['title'] == 'lmkkit weights'
    assert lk.validate_dataset(out, require_wheel=False) == []
    capsys.readouterr()
    with pytest.raises(ConfigError) as e:
        lk.main(['weights', str(tmp_path / 'w2'), '--checkpoint', str(tmp_path / 'disk.pth'), '--owner', 'ana'])
    assert str(e.value).startswith(f"--checkpoint: {tmp_path / 'disk.pth'} is not an lmkkit checkpoint (torch.load failed: ")


def test_wheelhouse_refuses_an_image_whose_versions_do_not_fit(tmp_path):
    "With the image's pip freeze as baseline, a shipped wheel that needs a newer torch stops the build."
    resolved = {'kornia': {'metadata': {'name': 'kornia', 'version': '0.9.0', 'requires_dist': ['torch>=2.5.1', 'numpy>=1.21']}}}
    (tmp_path / 'image.txt').write_text('torch==2.4.1+cu121\nnumpy==1.26.4\n')
    baseline = lk.read_baseline(tmp_path / 'image.txt')
    assert lk.baseline_conflicts(resolved, ['kornia'], baseline) == [
        'kornia 0.9.0 needs torch>=2.5.1, the image has torch==2.4.1+cu121; pin an older kornia with --package']


def _data(root, n_test, train_rows):
    for i in range(n_test):
        p = root / 'test' / 'a' / 'b' / 'c' / f'abc{i:013x}.jpg'
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    (root / 'train.csv').write_text('id,landmark_id\n' + 'x,1\n' * train_rows)
    return root


def test_public_run_detection(tmp_path):
    public = _data(tmp_path / 'public', 4, 6)
    hidden = _data(tmp_path / 'hidden', 9, 6)
    assert lk.is_public_run(public, 'retrieval', max_public_test=5)
    assert not lk.is_public_run(hidden, 'retrieval', max_public_test=5)
    assert lk.is_public_run(public, 'recognition', max_public_test=5, public_train_rows=6)
    assert not lk.is_public_run(public, 'recognition', max_public_test=5, public_train_rows=7)
    assert lk.is_public_run(public, 'recognition')  # 4 images is below the default bound
    with pytest.raises(ConfigError, match='attach the competition data'):
        lk.is_public_run(tmp_path / 'nothing', 'recognition')


KERNELS = sorted(p for p in (ROOT / 'kaggle_kernels').glob('*') if (p / 'kernel-metadata.json').is_file())


@pytest.mark.parametrize('folder', KERNELS, ids=[p.name for p in KERNELS])
def test_repository_kernels_are_valid(folder):
    assert lk.validate_kernel(folder) == []


def test_without_the_kaggle_package(tmp_path):
    "The kaggle package is an extra: without it `lmkkit kernels validate` says how to install it, in one line."
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'kaggle': raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import lmkkit.cli\n"
            f"sys.exit(lmkkit.cli.main(['kernels', 'validate', {str(make_kernel(tmp_path / 'k'))!r}]))\n")
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert res.returncode == 2
    assert res.stderr == "lmkkit kernels: error: the kaggle package is not installed: pip install 'lmkkit[kaggle]' (or pip install kaggle)\n"
