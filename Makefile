# Two commands do everything on a fresh machine: `make lab` and `make test`.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
PY    := $(BIN)/python
# torch goes in first. TORCH is split into words and passed to pip as they are, so it can carry pip options, e.g.
# a CUDA build: make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
# (`make torch TORCH=...` replaces the torch of an existing .venv).
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup torch lab test export check-export lint nbtest pytest readme readme-images docs tutorials browser-deps clean

setup: $(STAMP)

$(STAMP): settings.ini setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Replace the torch in .venv by $(TORCH) (e.g. a CUDA build), leaving the rest of the environment as it is.
torch: setup
	$(PY) -m pip uninstall -q -y torch
	$(PY) -m pip install -q $(TORCH)
	$(PY) -c "import torch; print('torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"

# JupyterLab refuses to run as root without --allow-root (containers and these build machines run as root).
lab: setup
	$(BIN)/jupyter lab nbs/tutorials $(if $(filter 0,$(shell id -u)),--allow-root)

export: setup
	$(BIN)/nbdev_export

# The package must be exactly what the notebooks export.
check-export: export
	@git diff --exit-code -- collapse_lab || { echo "collapse_lab/ differs from nbs/: edit the notebooks, run nbdev_export, commit."; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- collapse_lab | grep -v __pycache__)" || { git status --porcelain -- collapse_lab; echo "nbdev_export wrote files that are not committed."; exit 1; }

nbtest: setup
	COLLAPSE_LAB_QUICK=1 $(BIN)/nbdev_test --n_workers 2 --timing

# The browser tests drive Debian's Chromium through Playwright (pip, from dev_requirements). Playwright's own
# `playwright install` downloads a browser and cannot work here: never run it.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-deps:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium chromium-driver; }

# pytest's exit 5 (no tests collected) is a failure like any other non-zero exit.
pytest: setup browser-deps
	COLLAPSE_LAB_QUICK=1 $(PY) -m pytest tests -q -rs

# The exported package: no unused imports or variables, no undefined names (ruff's pyflakes rules); fix them in nbs/.
lint: setup
	$(BIN)/ruff check --select F --exclude collapse_lab/_modidx.py,collapse_lab/__init__.py collapse_lab

test: check-export lint nbtest pytest

readme: setup
	$(BIN)/jupyter nbconvert --to markdown nbs/index.ipynb --output-dir . --output README
	@# links and pictures are relative to nbs/ in the notebook, to the repository root in README.md
	sed -i -E 's#\]\((images|tutorials)/#](nbs/\1/#g; s#src="(images|tutorials)/#src="nbs/\1/#g' README.md

# The README's widget pictures, from the screenshots of the last browser-test run (test-artifacts/browser/).
readme-images: setup
	$(PY) docs/readme_images.py

# The docs site: nbdev_docs where Quarto is installed, else Sphinx + myst-nb offline (docs/build.py -> _docs/).
docs: setup
	@if command -v quarto >/dev/null 2>&1; then $(BIN)/nbdev_docs; else $(PY) docs/build.py; fi

# Re-run each tutorial at full size and store its outputs (figures, tables) in the notebook, with a hash of its code
# cells in the metadata; tests/test_tutorial_outputs.py fails when the code changes and the outputs are not re-run.
# One tutorial: make tutorials NB=nbs/tutorials/east.ipynb
tutorials: setup
	$(PY) tools/execute_tutorials.py $(or $(NB),nbs/tutorials/*.ipynb)

# CPU benchmarks (figures and ratios, medians of interleaved repeats); the GPU set: bash benchmarks/gpu_check.sh
.PHONY: bench
bench: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) benchmarks/bench.py --set cpu
