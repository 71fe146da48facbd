# The two commands of the README: `make demo` (set up, then run the main job) and `make test`
# (set up, then run the whole test suite). Setup installs the exact versions the suite was last green with
# (constraints.txt, the lock) and is idempotent: it reinstalls only when settings.ini, setup.py or the lock change.
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu   # CPU-only torch: no CUDA libraries
# `make test-latest` runs the suite on the newest releases in .venv-latest (no lock), so upstream changes are
# seen early; when it passes, `make lock` moves the lock to those versions (review the diff, commit it).
PYTHON ?= python3
TORCH_INDEX ?=
LOCK := constraints.txt
VENV := .venv
BIN := $(VENV)/bin
LATEST := .venv-latest
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
# torch and torchvision as the lock pins them (e.g. torch==2.14.1): a public version also matches a build's local
# label, so TORCH_INDEX's CPU build (2.14.1+cpu) satisfies the lock's pin.
TORCH_PINS = $(shell grep -E '^(torch|torchvision)==' $(LOCK))
# The lock was made on Python 3.11 (several of its releases need 3.11+: numpy, pandas, matplotlib...); an older
# Python installs without it (the newest releases the ranges allow) and says so.
LOCKED := $(shell $(PYTHON) -c 'import sys; print(int(sys.version_info >= (3, 11)))' 2>/dev/null)
PIN := $(if $(filter 1,$(LOCKED)),-c $(LOCK))

.PHONY: setup system-deps demo test test-latest lock bench docs lab clean

setup: $(VENV)/.installed

# pip shows its progress (a few minutes on a first install). With TORCH_INDEX set, torch and torchvision
# come from that index first (PyTorch's CPU wheels: about 0.2 GB instead of 3 GB of CUDA libraries), at the
# lock's versions; their dependencies from that index are then moved to the lock's versions by the next install.
$(VENV)/.installed: settings.ini setup.py $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(if $(PIN),,@echo "note: $(PYTHON) is older than Python 3.11, which $(LOCK) was made on: installing without it")
	$(BIN)/python -m pip install $(PIN) pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --index-url $(TORCH_INDEX) $(if $(PIN),$(TORCH_PINS),torch torchvision))
	$(BIN)/python -m pip install $(PIN) --progress-bar on -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name python3 >/dev/null
	touch $@

# The newest releases the requirements allow (eager upgrades, no lock), in their own venv; LMKKIT_UNLOCKED tells
# the suite that the environment is not the lock's on purpose. The venv is kept and upgraded on each run (with
# TORCH_INDEX, that index stays in the upgrade, whose local label (+cpu) wins a tie with PyPI's CUDA build).
test-latest: system-deps
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --upgrade pip
	$(if $(TORCH_INDEX),$(LATEST)/bin/python -m pip install --upgrade --index-url $(TORCH_INDEX) torch torchvision)
	$(LATEST)/bin/python -m pip install --upgrade --upgrade-strategy eager --progress-bar on \
	  $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e '.[dev]'
	$(LATEST)/bin/python -m ipykernel install --sys-prefix --name python3 --display-name python3 >/dev/null
	LMKKIT_UNLOCKED=1 $(LATEST)/bin/python -m pytest tests -q

# Rewrite the lock from .venv-latest (run after `make test-latest` passed). Left out: lmkkit itself (editable),
# and the CUDA build's own pins (nvidia-*, triton, cuda-*), which torch's version fixes for each build.
lock:
	test -x $(LATEST)/bin/python || { echo "no $(LATEST): run make test-latest first"; exit 2; }
	{ sed -n '/^#/p' $(LOCK); $(LATEST)/bin/python -m pip freeze --all --exclude-editable \
	  | grep -Eiv '^(nvidia-|triton==|cuda-)'; } > $(LOCK).new && mv $(LOCK).new $(LOCK)

# The system packages the tests need: Chromium (Debian's package) for the documentation's browser tests.
# MathJax is not one of them: it comes from PyPI (django-static-mathjax, a dev requirement).
# As root with apt-get it is installed here; otherwise this says what to install (the browser tests are
# skipped without it, except under CI).
SYSTEM_PACKAGES := chromium
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "note: install$$missing (e.g. sudo apt-get install$$missing) for the documentation's browser tests"; fi

demo: setup
	$(BIN)/lmkkit demo --out runs/demo

test: setup system-deps
	$(BIN)/python -m pytest tests -q

docs: setup
	$(BIN)/lmkkit docs --execute

bench: setup
	for b in tests/benchmarks/bench_*.py; do echo "## $$b"; $(BIN)/python $$b || exit 1; done

lab: setup
	$(BIN)/jupyter lab nbs

clean:
	rm -rf $(VENV) $(LATEST) _site _docs runs *.egg-info
