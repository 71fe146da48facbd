# The two commands of the README: `make demo` (set up, then run the main job) and `make test`
# (set up, then run the whole test suite). Setup is idempotent: it reinstalls only when
# settings.ini or setup.py change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup browser demo test bench docs lab clean

setup: $(VENV)/.installed

$(VENV)/.installed: settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name python3 >/dev/null
	touch $@

# The documentation tests open every page in headless Chromium (Debian's package). As root it is
# installed here; otherwise install it yourself (the tests skip without it, except under CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "note: chromium not found; install it (e.g. sudo apt-get install chromium) for the docs browser test"; fi; }

demo: setup
	$(BIN)/lmkkit demo --out runs/demo

test: setup browser
	$(BIN)/python -m pytest tests -q

docs: setup
	$(BIN)/lmkkit docs --execute

bench: setup
	for b in tests/benchmarks/bench_*.py; do echo "## $$b"; $(BIN)/python $$b || exit 1; done

lab: setup
	$(BIN)/jupyter lab nbs

clean:
	rm -rf $(VENV) _site _docs runs *.egg-info
