# Two commands do everything on a fresh machine: `make lab` and `make test`.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
PY    := $(BIN)/python
# torch goes in first: 2.13.0 is a CPU build on the project machines; override for CUDA hosts.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup lab test export check-export nbtest pytest readme readme-images docs browser-deps clean

setup: $(STAMP)

$(STAMP): settings.ini setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

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

test: check-export nbtest pytest

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

# CPU benchmarks (figures and ratios, medians of interleaved repeats); the GPU set: bash benchmarks/gpu_check.sh
.PHONY: bench
bench: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) benchmarks/bench.py --set cpu
