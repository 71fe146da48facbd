"Shared pytest setup: offline environment, the repository root, and small synthetic data sets."
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def root() -> Path:
    "The repository root."
    return ROOT


@pytest.fixture(scope='session')
def python() -> str:
    "The interpreter running the tests (the project's environment)."
    return sys.executable
