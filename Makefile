# The two commands of the README: `make demo` (set up, then run the main job) and `make test`
# (set up, then run the whole test suite). Setup is idempotent: it reinstalls only when
# settings.ini or setup.py change.
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu   # CPU-only torch: no CUDA libraries
PYTHON ?= python3
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup system-deps demo test bench docs lab clean

setup: $(VENV)/.installed

# pip shows its progress (a few minutes on a first install). With TORCH_INDEX set, torch and torchvision
# come from that index first (PyTorch's CPU wheels: about 0.2 GB instead of 3 GB of CUDA libraries).
$(VENV)/.installed: settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --index-url $(TORCH_INDEX) torch torchvision)
	$(BIN)/python -m pip install --progress-bar on -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name python3 >/dev/null
	touch $@

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
	rm -rf $(VENV) _site _docs runs *.egg-info
