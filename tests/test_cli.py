"The `lmkkit` console script end to end: synth writes a data set, evaluate scores submissions on it."
import csv
import subprocess
import sys
from pathlib import Path

import pytest

from lmkkit.metrics import gap, map_at_k, read_solution, read_submission


def lmkkit(*args, check=True):
    "Run the installed console script; returns the completed process."
    exe = Path(sys.executable).parent / 'lmkkit'
    res = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check: assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope='module')
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('cli') / 'synth'
    lmkkit('synth', out, '--seed', 3, '--landmarks', 8, '--train-per-landmark', 3, '--image-size', 64)
    return out


def _rows(path: Path) -> list[dict]:
    with open(path, newline='') as f: return list(csv.DictReader(f))


def _perfect_recognition(synth: Path, out: Path) -> Path:
    "A submission that predicts every landmark query's true label with confidence 1 and nothing else."
    with open(out, 'w', newline='') as f:
        w = csv.writer(f); w.writerow(['id', 'landmarks'])
        for r in _rows(synth / 'recognition_solution.csv'):
            w.writerow([r['id'], f"{r['landmarks'].split()[0]} 1.0" if r['landmarks'] else ''])
    return out


def test_help_lists_every_command():
    text = lmkkit('--help').stdout
    for name in ('synth', 'evaluate', 'train', 'docs', 'kernels', 'sweep'): assert name in text


def test_synth_writes_the_gldv2_layout(synth):
    for name in ('train.csv', 'recognition_solution.csv', 'retrieval_solution.csv',
                 'recognition_sample_submission.csv', 'retrieval_sample_submission.csv'):
        assert (synth / name).is_file(), name
    first = _rows(synth / 'train.csv')[0]['id']
    assert (synth / 'train' / first[0] / first[1] / first[2] / f'{first}.jpg').is_file()


def test_synth_refuses_to_overwrite_without_the_flag(synth):
    res = lmkkit('synth', synth, '--landmarks', 8, check=False)
    assert res.returncode != 0 and 'overwrite' in res.stderr.lower()


def test_perfect_recognition_scores_one(synth, tmp_path):
    res = lmkkit('evaluate', _perfect_recognition(synth, tmp_path / 'sub.csv'), synth / 'recognition_solution.csv')
    assert res.stdout.strip().splitlines()[-1] == 'GAP 1.0000'


@pytest.mark.parametrize('track,metric', [('recognition', 'GAP'), ('retrieval', 'mAP@100')])
def test_sample_submission_scores_what_the_metric_says(synth, track, metric):
    sub, sol = synth / f'{track}_sample_submission.csv', synth / f'{track}_solution.csv'
    _, predictions = read_submission(sub)
    _, by_usage = read_solution(sol)
    truth = {q: t for usage in ('Public', 'Private') for q, t in by_usage.get(usage, {}).items()}
    score = gap if track == 'recognition' else map_at_k
    expected = score({q: p for q, p in predictions.items() if q in truth and p}, truth)
    last = lmkkit('evaluate', sub, sol).stdout.strip().splitlines()[-1]
    assert last == f'{metric} {expected:.4f}'


def test_malformed_submission_names_the_row(synth, tmp_path):
    rows = (synth / 'recognition_sample_submission.csv').read_text().splitlines()
    rows[3] = rows[3].split(',')[0] + ',notanumber 0.5'
    bad = tmp_path / 'bad.csv'; bad.write_text('\n'.join(rows) + '\n')
    res = lmkkit('evaluate', bad, synth / 'recognition_solution.csv', check=False)
    assert res.returncode == 2 and 'line 4' in res.stderr, res.stderr


def test_malformed_solution_is_an_error_not_a_traceback(synth, tmp_path):
    bad = tmp_path / 'solution.csv'
    bad.write_text('id,landmarks,Usage\nabc,1,Sometimes\n')
    res = lmkkit('evaluate', synth / 'recognition_sample_submission.csv', bad, check=False)
    assert res.returncode == 2 and 'Traceback' not in res.stderr and 'Sometimes' in res.stderr, res.stderr


# ---------------------------------------------------------------- a user's mistakes: one line, exit code 2, no traceback
def _mistake(*args, says: str, env: dict | None = None):
    res = lmkkit(*args, check=False) if env is None else _lmkkit_env(env, *args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (args, res.returncode, res.stderr[-2000:])
    assert len(lines) == 1 and 'Traceback' not in res.stderr, res.stderr[-2000:]
    assert says in lines[0], lines[0]
    return lines[0]


def _lmkkit_env(env, *args):
    import os
    exe = Path(sys.executable).parent / 'lmkkit'
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def test_synth_zero_landmarks(tmp_path):
    _mistake('synth', tmp_path/'s', '--landmarks', 0, says='--landmarks: must be at least 1, got 0')


def test_synth_into_a_set_names_the_flag(synth):
    _mistake('synth', synth, '--landmarks', 8, says='--overwrite')


def test_train_on_a_missing_folder(tmp_path):
    _mistake('train', tmp_path/'nowhere', tmp_path/'run', says='train.csv not found; DATA_DIR must be a GLDv2 folder')


def test_train_bad_option_value(synth, tmp_path):
    _mistake('train', synth, tmp_path/'run', '--preset', 'demo', '--lr', 'abc', says="parameter 'lr' must be float, got 'abc'")


def test_train_stages_shows_the_syntax(synth, tmp_path):
    line = _mistake('train', synth, tmp_path/'run', '--preset', 'demo', '--stages', 64, says="parameter 'stages'")
    assert "--stages '((448, 8), (512, 8), (640, 8), (736, 4))'" in line


@pytest.mark.parametrize('option,value,says', [
    ('--backbone', 'resnet9999', "unknown timm backbone 'resnet9999'"),
    ('--head', 'foo', "unknown head 'foo'; choose one of:"),
    ('--pool', 'foo', "unknown pool 'foo'; choose one of:"),
    ('--lr', -1, "parameter 'lr' must be positive, got -1; e.g. `--lr 3e-4`"),
    ('--embedding_size', 0, "parameter 'embedding_size' must be >= 1, got 0"),
    ('--device', 'cuda', "no CUDA GPU is visible here; use `--device cpu` (or leave it out)"),
])
def test_train_impossible_settings(synth, tmp_path, option, value, says):
    "Settings that timm or torch would reject deep inside a traceback stop at once, in one line."
    import torch
    if option == '--device' and torch.cuda.is_available(): pytest.skip('a GPU is visible: cuda is a valid device here')
    _mistake('train', synth, tmp_path/'run', '--preset', 'demo', option, value, says=says)


def test_train_on_the_csv_instead_of_its_folder(synth, tmp_path):
    _mistake('train', synth/'train.csv', tmp_path/'run', says=f'is a file; pass the folder that holds train.csv and train/ ({synth})')


def test_evaluate_two_folders(tmp_path):
    _mistake('evaluate', tmp_path, tmp_path, says='is a folder; pass the CSV file inside it')


def test_train_set_too_small_for_the_batch(synth, tmp_path):
    _mistake('train', synth, tmp_path/'run', '--preset', 'demo', '--device', 'cpu', '--batch_size', 4096,
             says='too few for batch_size=4096')


def test_debug_shows_the_traceback(tmp_path):
    res = _lmkkit_env({'LMKKIT_DEBUG': '1'}, 'evaluate', tmp_path, tmp_path)
    assert res.returncode != 0 and 'Traceback' in res.stderr and 'ConfigError' in res.stderr


HEAVY = ('torch', 'timm', 'cv2')

@pytest.mark.parametrize('cmd', [[], ['synth'], ['evaluate'], ['train'], ['demo'], ['docs'], ['kernels'], ['sweep']])
def test_help_imports_no_torch(cmd):
    "`lmkkit --help` and these `lmkkit CMD --help` answer without importing torch, timm or OpenCV (what makes them slow)."
    code = ("import sys\nfrom lmkkit.cli import main\ntry: main(sys.argv[1:])\nexcept SystemExit: pass\n"
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    res = subprocess.run([sys.executable, '-c', code, *cmd, '--help'], capture_output=True, text=True, timeout=300)
    assert 'usage: lmkkit' in res.stdout and res.stdout.strip().splitlines()[-1] == 'HEAVY []', (cmd, res.stdout[-500:], res.stderr[-2000:])


def test_python_dash_m_runs_the_cli():
    "`python -m lmkkit.cli` is the `lmkkit` command (it printed nothing before)."
    res = subprocess.run([sys.executable, '-m', 'lmkkit.cli', 'evaluate', '--help'], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and 'usage: lmkkit evaluate' in res.stdout, (res.stdout[-500:], res.stderr[-1000:])


def _lmkkit_imports() -> dict[str, set[str]]:
    "lmkkit module -> the lmkkit modules it imports, at the top or inside a function (read from the package's files)."
    import ast
    import lmkkit
    root = Path(lmkkit.__file__).parent
    graph = {}
    for path in root.rglob('*.py'):
        name = '.'.join(('lmkkit',) + path.relative_to(root).with_suffix('').parts).removesuffix('.__init__')
        pkg = name if path.name == '__init__.py' else name.rpartition('.')[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import): found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = pkg.rsplit('.', node.level - 1)[0] if node.level else ''
                mod = '.'.join(p for p in (base, node.module) if p)
                found |= {mod} | {f'{mod}.{a.name}' for a in node.names}
        graph[name] = {m for m in found if m.startswith('lmkkit.')}
    return {k: {m for m in v if m in graph and m != k} for k, v in graph.items()}


def test_no_module_imports_the_cli_back():
    "`lmkkit.cli` dispatches to every command's `main`; nothing imports it, lazily or not (no cycle through it)."
    assert [m for m, deps in _lmkkit_imports().items() if 'lmkkit.cli' in deps] == []


def test_no_import_cycle_between_modules():
    "No cycle, lazy or not, among lmkkit's modules (`lmkkit.train.main` once called back into `lmkkit.cli`)."
    graph, done = _lmkkit_imports(), set()
    def visit(m, path):
        for d in graph[m] - done:
            assert d not in path, f"import cycle: {' -> '.join(path[path.index(d):] + (d,))}"
            visit(d, path + (d,))
        done.add(m)
    for m in graph: visit(m, (m,))


# ---------------------------------------------------------------- newcomer trial: one prefix, one line, the fix in the CLI's own spelling
COMMANDS = ('benchmark', 'demo', 'docs', 'evaluate', 'kernels', 'rehearse', 'sweep', 'synth', 'train')


def test_the_command_list_is_complete():
    from lmkkit.cli import COMMANDS as registered
    assert tuple(registered.names) == COMMANDS


@pytest.mark.parametrize('command', COMMANDS)
def test_every_command_usage_error_is_one_line(command):
    "argparse's usage + error (two lines) becomes one line with the shared prefix, delegated commands included."
    line = _mistake(command, '--no-such-option', says=f'lmkkit {command}: error: ')
    assert line.startswith(f'lmkkit {command}: error: ') and f'`lmkkit {command}' in line and '--help`' in line, line


def test_a_subcommand_usage_error_names_its_help():
    _mistake('kernels', 'owner', 'ana', says='lmkkit kernels: error: the following arguments are required: folders '
                                             '(see `lmkkit kernels owner --help`)')


def test_train_type_hint_names_the_cli_option(synth, tmp_path):
    line = _mistake('train', synth, tmp_path/'run', '--preset', 'demo', '--lr', 'abc', says='e.g. --lr 0.0001')
    assert '-p ' not in line and 'papermill' not in line, line


def test_train_stages_pair_says_what_is_valid(synth, tmp_path):
    _mistake('train', synth, tmp_path/'run', '--preset', 'demo', '--stages', '(64,1)',
             says="parameter 'stages' must be tuple[tuple[int, int], ...], got (64, 1) (tuple); write a Python literal in quotes, "
                  "e.g. --stages '((448, 8), (512, 8), (640, 8), (736, 4))'")


def _kernel(folder: Path) -> Path:
    import shutil
    return Path(shutil.copytree(Path(__file__).resolve().parents[1]/'kaggle_kernels'/'lmkkit-train', folder))


def test_kernels_owner_needs_a_kaggle_username(tmp_path):
    folder = _kernel(tmp_path/'k')
    before = (folder/'kernel-metadata.json').read_text()
    _mistake('kernels', 'owner', 'Bad Name!', folder, says="'Bad Name!' is not a Kaggle username: use only lowercase letters, digits")
    _mistake('kernels', 'owner', 'Ana', folder, says="did you mean 'ana'?")
    assert (folder/'kernel-metadata.json').read_text() == before
    assert 'ana/lmkkit-train' in lmkkit('kernels', 'owner', 'ana', folder).stdout


def test_kernels_validate_refuses_a_bad_owner_already_written(tmp_path):
    import json
    folder = _kernel(tmp_path/'k')
    meta = json.loads((folder/'kernel-metadata.json').read_text())
    (folder/'kernel-metadata.json').write_text(json.dumps({**meta, 'id': 'Bad Name!/lmkkit-train'}))
    res = lmkkit('kernels', 'validate', folder, check=False)
    assert res.returncode == 1 and "id 'Bad Name!/lmkkit-train': 'Bad Name!' is not a Kaggle username" in res.stdout, res.stdout


def test_kernels_validate_takes_the_metadata_file(tmp_path):
    meta = _kernel(tmp_path/'k')/'kernel-metadata.json'
    assert lmkkit('kernels', 'validate', meta).stdout.strip() == f'{meta}: ok'
    res = lmkkit('kernels', 'validate', meta.parent/'lmkkit-train.ipynb', check=False)
    assert res.returncode == 1 and f"is a file; pass the kernel folder that holds it and kernel-metadata.json ({meta.parent})" in res.stdout


def test_synth_into_an_existing_file(synth):
    _mistake('synth', synth/'train.csv', says=f'{synth/"train.csv"} is a file; pass a folder to write the data set into')


@pytest.fixture(scope='module')
def revisited(tmp_path_factory) -> tuple[Path, Path]:
    "`lmkkit synth --revisited` output and a random tiny checkpoint."
    from lmkkit.model import create_model, save_checkpoint
    root = tmp_path_factory.mktemp('revisited')
    out = lmkkit('synth', root/'data', '--revisited', 'roxford5k', '--landmarks', 2, '--image-size', 32, '--seed', 1).stdout
    assert out.splitlines() == [f"RevisitedSet(roxford5k: 4 queries, 24 images + 0 distractors) in {root/'data'/'roxford5k'}",
                                f"benchmark a checkpoint on it: lmkkit benchmark roxford5k {root/'data'} --checkpoint CKPT"]
    return root/'data', save_checkpoint(root/'model.pt', create_model('test_resnet', embedding_size=16, head=None), None)


def test_synth_revisited_set_runs_the_benchmark(revisited):
    data, ckpt = revisited
    table = lmkkit('benchmark', 'roxford5k', data, '--checkpoint', ckpt, '--size', 32, '--scales', 1, '--device', 'cpu', '--quiet').stdout
    assert table.startswith('roxford5k: 24 images + 0 distractors') and 'Easy' in table and 'Hard' in table, table
    _mistake('synth', data, '--revisited', 'roxford5k', says='already holds a benchmark set (gnd_roxford5k.pkl)')
    _mistake('synth', data, '--revisited', 'roxford5k', '--train-per-landmark', 2, says='--train-per-landmark shape the GLDv2 set')


def test_benchmark_checkpoint_is_a_folder(revisited):
    data, _ = revisited
    _mistake('benchmark', 'roxford5k', data, '--checkpoint', data,
             says=f"checkpoint {data} is a folder; pass the checkpoint file in it, e.g. {data/'model.pt'}")


def test_benchmark_checkpoint_is_not_one(revisited):
    data, _ = revisited
    gnd = data/'roxford5k'/'gnd_roxford5k.pkl'
    line = _mistake('benchmark', 'roxford5k', data, '--checkpoint', gnd,
                    says=f"{gnd} is not an lmkkit checkpoint (torch.load failed: UnpicklingError: ")
    assert '); fix: pass the model.pt' in line and 'weights_only' not in line, line


def test_debug_shows_a_delegated_commands_traceback(tmp_path):
    res = _lmkkit_env({'LMKKIT_DEBUG': '1'}, 'kernels', 'owner', 'Bad Name!', tmp_path)
    assert res.returncode != 0 and 'Traceback' in res.stderr and 'ConfigError' in res.stderr


def test_every_public_kit_error_shares_one_base():
    "Every public error class of the kit derives from LmkkitError, the one class the command line treats as a mistake."
    import importlib, inspect, pkgutil
    import lmkkit
    from lmkkit.cli import is_mistake
    from lmkkit.core import LmkkitError
    errors = {}
    for m in pkgutil.walk_packages(lmkkit.__path__, 'lmkkit.'):
        if m.name == 'lmkkit._modidx': continue
        mod = importlib.import_module(m.name)
        errors |= {n: o for n, o in vars(mod).items() if inspect.isclass(o) and issubclass(o, Exception)
                   and o.__module__ == mod.__name__ and not n.startswith('_')}
    assert {'ConfigError', 'StageError', 'DataError', 'SubmissionError', 'SolutionError', 'CheckpointError', 'TrainError',
            'TrainingDiverged', 'KernelError'} <= set(errors)
    assert [n for n, e in errors.items() if not issubclass(e, LmkkitError)] == []
    assert all(is_mistake(e('x')) for e in errors.values())
