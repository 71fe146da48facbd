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


@pytest.fixture(scope='session')
def gld(tmp_path_factory):
    "A tiny synthetic GLDv2 folder: 8 landmarks, about 48 train images of 48 px (training and resume tests)."
    from lmkkit.synth import make_synthetic
    d = tmp_path_factory.mktemp('gld')
    make_synthetic(d, seed=0, verbose=False, n_landmarks=8, n_unseen=1, n_families=2, train_per_landmark=6,
                   n_train_nonlandmarks=2, n_index_nonlandmarks=2, n_test_nonlandmarks=2, index_per_landmark=1,
                   test_per_landmark=1, image_size=48)
    return d
