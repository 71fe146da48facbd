"The lock (constraints.txt) that `make setup` installs, `make test-latest` beside it, and the requirement floors."
import os
import re
import subprocess
from configparser import ConfigParser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT/'constraints.txt'
BUILD_PINS = re.compile(r'^(nvidia-|triton$|cuda-)')  # the CUDA build of torch pins these itself

def settings() -> dict:
    cfg = ConfigParser(delimiters=['='])
    cfg.read(ROOT/'settings.ini', encoding='utf-8')
    return cfg['DEFAULT']

def requirements(key: str) -> list[Requirement]: return [Requirement(r) for r in settings()[key].split()]

def lock() -> dict[str, Version]:
    "name -> pinned version; every line that is not a comment must be `name==version`."
    pins = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith('#'): continue
        name, sep, version = line.partition('==')
        assert sep and re.fullmatch(r'[A-Za-z0-9._-]+', name), f"not a name==version pin: {line!r}"
        pins[canonicalize_name(name)] = Version(version)
    return pins

def make_n(*args) -> str:
    "The commands `make` would run (printed, not run), as if nothing were built yet."
    return subprocess.run(['make', '-n', '-B', *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

def test_the_lock_pins_every_requirement_within_its_range():
    pins = lock()
    needed = requirements('requirements') + requirements('dev_requirements')
    needed += [Requirement(r) for r in ('papermill', 'ipykernel', 'pyyaml', 'kaggle', 'opencv-python-headless')]
    for req in needed:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"

def test_the_lock_leaves_out_lmkkit_and_the_torch_builds_own_pins():
    pins = lock()
    assert 'lmkkit' not in pins
    assert not [n for n in pins if BUILD_PINS.match(n)]
    assert not pins[canonicalize_name('torch')].local  # a public version: 2.14.1 matches 2.14.1+cpu as well
    assert Version('2.14.1+cpu') in SpecifierSet('==2.14.1')  # what TORCH_INDEX's CPU build relies on

def test_the_librarys_own_requirements_stay_ranges():
    assert not [r for r in requirements('requirements') if any(s.operator in ('==', '===') for s in r.specifier)]

def test_torch_floor_is_one_where_weights_only_is_safe():
    "CVE-2025-32434: torch.load(weights_only=True) runs code from a crafted file before torch 2.6."
    reqs = {r.name: r for r in requirements('requirements')}
    for name, floor, below in (('torch', '2.6', '2.5.1'), ('torchvision', '0.21', '0.20.1')):
        assert Version(floor) in reqs[name].specifier and Version(below) not in reqs[name].specifier, reqs[name]

def test_make_setup_installs_with_the_lock_and_reinstalls_when_it_changes():
    cmds = make_n('setup')
    pip = [c for c in cmds.splitlines() if ' pip install ' in c]
    assert pip and all('-c constraints.txt' in c for c in pip), cmds
    rule = re.search(r'^\$\(VENV\)/\.installed:(.*)$', (ROOT/'Makefile').read_text(), re.M)
    assert rule and '$(LOCK)' in rule.group(1).split()

def test_make_setup_with_a_torch_index_takes_torch_at_the_locks_version():
    pins = lock()
    cmds = make_n('setup', 'TORCH_INDEX=https://download.pytorch.org/whl/cpu')
    first = next(c for c in cmds.splitlines() if '--index-url' in c)
    assert f"torch=={pins['torch']}" in first and f"torchvision=={pins['torchvision']}" in first, first
    assert '-c constraints.txt' not in first  # torch's own dependencies come from that index first, then move to the lock

def test_make_test_latest_runs_the_suite_unlocked_in_its_own_venv():
    cmds = make_n('test-latest')
    assert 'constraints.txt' not in cmds and '.venv-latest/bin/python -m pytest tests' in cmds, cmds
    assert '--upgrade-strategy eager' in cmds
    assert '.venv-latest/' in (ROOT/'.gitignore').read_text().split()
    assert 'constraints.txt' in make_n('lock')

@pytest.mark.skipif(bool(os.environ.get('LMKKIT_UNLOCKED')), reason='make test-latest: newest releases on purpose')
def test_this_environment_is_the_lock():
    "Under `make test` the venv holds exactly the lock's versions (a build's local label, +cpu, aside)."
    wrong = {}
    for name, version in lock().items():
        try: have = Version(metadata.version(name))
        except metadata.PackageNotFoundError: continue  # a platform-only package (constraints never install)
        if have.public != version.public: wrong[name] = f"{have} (lock: {version})"
    assert not wrong, f"not the lock's versions: {wrong}; run make setup (or make lock on purpose)"
