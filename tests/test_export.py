"The committed library is exactly what nbdev_export makes of the notebooks, and the notebooks are clean."
import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _copy_project(dst: Path) -> Path:
    "Copy what nbdev needs (settings, notebooks, library) into `dst`."
    shutil.copy(ROOT / 'settings.ini', dst)
    shutil.copytree(ROOT / 'nbs', dst / 'nbs', ignore=shutil.ignore_patterns('.ipynb_checkpoints'))
    shutil.copytree(ROOT / 'lmkkit', dst / 'lmkkit', ignore=shutil.ignore_patterns('__pycache__'))
    return dst


def _tool(name: str) -> str: return str(Path(sys.executable).parent / name)


def _differences(a: Path, b: Path, pattern: str) -> list[str]:
    "Files matching `pattern` that differ between, or exist in only one of, two trees."
    names = {p.relative_to(a) for p in a.rglob(pattern)} | {p.relative_to(b) for p in b.rglob(pattern)}
    return sorted(str(n) for n in names
                  if not ((a/n).exists() and (b/n).exists() and filecmp.cmp(a/n, b/n, shallow=False)))


def test_library_matches_notebooks(tmp_path):
    work = _copy_project(tmp_path)
    subprocess.run([_tool('nbdev_export')], cwd=work, check=True, capture_output=True)
    diff = _differences(ROOT / 'lmkkit', work / 'lmkkit', '*.py')
    assert not diff, f'lmkkit/ is out of step with nbs/ (run nbdev_export and commit): {diff}'


def test_notebooks_are_clean(tmp_path):
    work = _copy_project(tmp_path)
    subprocess.run([_tool('nbdev_clean')], cwd=work, check=True, capture_output=True)
    diff = _differences(ROOT / 'nbs', work / 'nbs', '*.ipynb')
    assert not diff, f'notebooks are not clean (run nbdev_clean and commit): {diff}'
