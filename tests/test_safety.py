"Safe with files from strangers, never destroys a user's data (issue 20, items 2-5, 9, 10): each command, run as a user runs it."
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = 'import sys; from lmkkit.cli import main; sys.exit(main(sys.argv[1:]))'


def lmkkit(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    "`lmkkit ARGS` in a fresh interpreter on this checkout: a crash (a segfault) is a return code, not a dead pytest."
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'HF_HUB_OFFLINE': '1', 'NO_ALBUMENTATIONS_UPDATE': '1'}
    env.pop('LMKKIT_DEBUG', None)
    return subprocess.run([sys.executable, '-c', CLI, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def one_line_error(res, command: str, *contains: str) -> None:
    "Exit 2 and exactly one line on stderr that names the problem."
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    err = res.stderr.strip()
    assert err.count('\n') == 0 and err.startswith(f'lmkkit {command}: error: '), err
    for text in contains: assert text in err, (text, err)


def snapshot(folder: Path) -> dict:
    "Every file under `folder` with its bytes."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


# ---- item 2: a crafted ground-truth pickle ---------------------------------------------------------------------
class _CraftedDtype:
    "A dtype whose BUILD state declares an object field but not the object flag: numpy reads file bytes as pointers."
    def __reduce__(self):
        return (np.dtype, ('V8', False, True), (3, '|', None, ('a',), {'a': (np.dtype('O'), 0)}, 8, 1, 0))


class _CraftedArray:
    def __reduce__(self):
        return (np.ndarray.__reduce__(np.zeros(1))[0], (np.ndarray, (0,), b'b'), (1, (4,), _CraftedDtype(), False, b'A' * 32))


@pytest.fixture()
def crafted(tmp_path) -> Path:
    "A revisited data folder whose gnd file passes the old checks and crashes Python when its box is read."
    folder = tmp_path / 'data' / 'roxford5k'
    (folder / 'jpg').mkdir(parents=True)
    gnd = dict(imlist=['a', 'b'], qimlist=['q'], gnd=[dict(bbx=_CraftedArray(), easy=[0], hard=[], junk=[1])])
    (folder / 'gnd_roxford5k.pkl').write_bytes(pickle.dumps(gnd, protocol=4))
    return tmp_path / 'data'


def test_crafted_ground_truth_is_refused_not_run(crafted, tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    code = f"from lmkkit.revisited import load_revisited\nprint(load_revisited({str(crafted)!r}, 'roxford5k').bbxs)"
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])  # before: -11 (SIGSEGV)
    assert "is not a plain ground-truth pickle: dtype 'V8' is not plain numbers or text" in res.stderr
    res = lmkkit('benchmark', 'roxford5k', crafted, '--checkpoint', tmp_path / 'model.pt', '--quiet')
    one_line_error(res, 'benchmark', 'gnd_roxford5k.pkl is not a plain ground-truth pickle')


def test_ground_truth_names_that_leave_the_folder_are_refused(crafted, tmp_path):
    gnd = dict(imlist=['a', '../../../../etc/passwd'], qimlist=['q'], gnd=[dict(bbx=[1., 2., 3., 4.], easy=[0], hard=[], junk=[])])
    (crafted / 'roxford5k' / 'gnd_roxford5k.pkl').write_bytes(pickle.dumps(gnd))
    res = lmkkit('benchmark', 'roxford5k', crafted, '--checkpoint', tmp_path / 'model.pt', '--quiet')
    one_line_error(res, 'benchmark', "1 'imlist' entries are not plain file names", "'../../../../etc/passwd'")


# ---- items 3, 4 and the other commands: nothing the kit did not create is deleted or overwritten ----------------
@pytest.fixture()
def work(tmp_path) -> Path:
    "A user's working folder: weeks of work, in the names the commands write."
    folder = tmp_path / 'work'
    for name in ('data/train.csv', 'cache/x.npy', 'model.pt', 'train/a/b/c/0abc.jpg', 'test/x.jpg', 'index/y.jpg',
                 'labels.csv', 'notes.md'):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(f'mine: {name}'.encode())
    return folder


def test_rehearse_refuses_a_folder_it_did_not_create(work):
    before = snapshot(work)
    res = lmkkit('rehearse', '--train', '3k', '--test', '200', '--dim', '128', '--nonlandmarks', '100', '--out', work)
    one_line_error(res, 'rehearse', f'{work} holds files that `lmkkit rehearse` did not create', '--out')
    assert snapshot(work) == before


def test_synth_overwrite_refuses_a_folder_it_did_not_create(work, tmp_path):
    before = snapshot(work)
    one_line_error(lmkkit('synth', work, '--overwrite', '--landmarks', '2', '--image-size', '32'), 'synth',
                   'did not create', 'choose an empty or new folder')
    assert snapshot(work) == before
    # its own set is replaced with --overwrite, the user's file beside it stays
    own = tmp_path / 'own'
    assert lmkkit('synth', own, '--landmarks', '2', '--image-size', '32').returncode == 0
    (own / 'notes.md').write_text('mine')
    assert lmkkit('synth', own, '--overwrite', '--landmarks', '2', '--image-size', '32', '--seed', '1').returncode == 0
    assert (own / 'notes.md').read_text() == 'mine'


def test_demo_and_sweep_refuse_a_folder_they_did_not_create(work, tmp_path):
    before = snapshot(work)
    one_line_error(lmkkit('demo', '--out', work, '--quiet'), 'demo', 'did not create', '--out')
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("a = 1  # a number\nout_dir = '.'  # results",
                                                                   metadata={'tags': ['parameters']})])
    nbformat.write(nb, str(tmp_path / 'exp.ipynb'))
    (tmp_path / 'grid.yaml').write_text(f"notebook: exp.ipynb\ngrid:\n  a: [1, 2]\nout: {work}\n")
    one_line_error(lmkkit('sweep', tmp_path / 'grid.yaml', '--quiet'), 'sweep', 'did not create', '--out')
    assert snapshot(work) == before


def test_wheelhouse_is_rebuilt_clean_with_its_own_pins(work, tmp_path):
    out = tmp_path / 'wh'
    assert lmkkit('kernels', 'wheelhouse', out, '--owner', 'someone', '--no-packages').returncode == 0
    (out / 'lmkkit-0.9.0-py3-none-any.whl').write_bytes(b'stale')  # sorts after 0.1.0 as a string
    (out / 'timm-0.6.0-py3-none-any.whl').write_bytes(b'stale')
    res = lmkkit('kernels', 'wheelhouse', out, '--owner', 'someone', '--no-packages')
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ['.lmkkit-owner', 'constraints.txt', 'dataset-metadata.json',
                                                     'lmkkit-0.1.0-py3-none-any.whl']
    assert (out / 'constraints.txt').read_text() == 'lmkkit==0.1.0\n'
    before = snapshot(work)
    one_line_error(lmkkit('kernels', 'wheelhouse', work, '--owner', 'someone', '--no-packages'), 'kernels',
                   'did not create', 'give the wheelhouse a new or empty folder')
    assert snapshot(work) == before


def test_benchmark_out_never_replaces_a_users_file(crafted, tmp_path):
    mine = tmp_path / 'results.csv'
    mine.write_text('my,results\n')
    res = lmkkit('benchmark', 'roxford5k', crafted, '--checkpoint', tmp_path / 'model.pt', '--out', mine, '--quiet')
    one_line_error(res, 'benchmark', 'is not a table lmkkit benchmark wrote; give a new file name')
    assert mine.read_text() == 'my,results\n'


# ---- item 5: the credential scan covers the code file that is sent, wherever it is ---------------------------------
@pytest.mark.parametrize('where', ['relative', 'absolute'])
def test_credentials_in_a_code_file_outside_the_folder(tmp_path, where):
    (tmp_path / 'leak.py').write_text("KAGGLE_KEY = '0123456789abcdef0123456789abcdef'\nprint('hi')\n")
    folder = tmp_path / 'kernel'
    folder.mkdir()
    code_file = '../leak.py' if where == 'relative' else str(tmp_path / 'leak.py')
    meta = dict(id='someone/lmkkit-leaky', title='lmkkit-leaky', code_file=code_file, language='python', kernel_type='script',
                is_private=True, enable_gpu=True, enable_internet=False, competition_sources=['landmark-retrieval-2021'])
    (folder / 'kernel-metadata.json').write_text(json.dumps(meta))
    res = lmkkit('kernels', 'validate', folder)
    assert res.returncode == 1, res.stdout + res.stderr
    assert 'contains a literal KAGGLE_KEY / KAGGLE_API_TOKEN value' in res.stdout, res.stdout
    res = lmkkit('kernels', 'push', folder, '--dry-run')
    one_line_error(res, 'kernels', 'contains a literal KAGGLE_KEY')
    assert 'would push' not in res.stdout


# ---- item 10: ids that are not plain file names --------------------------------------------------------------------
def test_csv_ids_that_leave_the_data_folder_are_refused(tmp_path):
    data = tmp_path / 'gld'
    (data / 'train').mkdir(parents=True)
    (data / 'train.csv').write_text('id,landmark_id\n0123456789abcdef,1\n../../../etc/passwd,2\n/abs/x,3\n')
    res = lmkkit('train', data, tmp_path / 'run', '--preset', 'demo', '--quiet')
    assert res.returncode == 2, res.stderr[-2000:]
    assert "train.csv, line 3: 2 id(s) are not plain file names, the first '../../../etc/passwd'" in res.stderr
    assert res.stderr.strip().count('\n') == 0
