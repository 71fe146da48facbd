# The two commands of the README: `make demo` (set up, then run the main job) and `make test`
# (set up, then run the whole test suite). Setup is idempotent: it reinstalls only when
# settings.ini or setup.py change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup demo test bench docs lab clean

setup: $(VENV)/.installed

$(VENV)/.installed: settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name python3 >/dev/null
	touch $@

demo: setup
	$(BIN)/lmkkit demo --out runs/demo

test: setup
	$(BIN)/python -m pytest tests -q

bench: setup
	for b in tests/benchmarks/bench_*.py; do echo "## $$b"; $(BIN)/python $$b || exit 1; done

lab: setup
	$(BIN)/jupyter lab nbs

clean:
	rm -rf $(VENV) _site _docs runs *.egg-info
