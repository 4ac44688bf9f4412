#!/usr/bin/env bash
# The whole GPU check, in under 6 minutes on one H200:
#   1. installs what is missing (wheels from .whl/ at the repo root: transformer-lens and the few packages it and the
#      widgets need beyond a CUDA PyTorch image; see benchmarks/RESULTS.md for the list), falls back to a stub for
#      `datasets` if that cannot be imported there;
#   2. benchmarks/bench.py --set gpu: GPT-2 small and Pythia-1.4B shapes (random weights from transformers configs, no
#      download), bf16, batch 32 x 128: bare HF vs bridge vs fast path, sweeps, training with a clamp, SteeringLab
#      update, east_vector memory;
#   3. tests/test_host_sync.py: no host read or host-to-GPU copy per pass beyond the bare pass (on CUDA counted by
#      torch's sync-debug mode too), when pytest is there;
#   4. benchmarks/run_notebooks.py --device cuda: every tutorial at its quick setting and every widget notebook, with
#      every model forced onto the GPU, then each widget's update callback, timed.
#
#   bash benchmarks/gpu_check.sh          # on a CUDA machine; figures and logs go to $OUT (or /tmp/collapse_lab_gpu_check)
#   bash benchmarks/gpu_check.sh --cpu    # dry run of the same code paths on CPU with small shapes (no GPU figures)
# Environment: NB_TIMEOUT (s per notebook, default 200), NB_PARALLEL (default 8), BENCH_TIMEOUT (default 200),
#              NOTEBOOKS (space-separated paths; default: discovered), BENCH_ONLY (bench.py --only), PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu; [ "${1:-}" = "--cpu" ] && MODE=cpu
OUTDIR=${OUT:-/tmp/collapse_lab_gpu_check}; mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
[ "$MODE" = cpu ] && [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
T0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - T0 )) s] $*"; }

# ------------------------------------------------------------------ 1. what is missing
NEED="transformer_lens datasets fastcore IPython ipywidgets"
if ! $PY -c "import ${NEED// /,}" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    stamp "installing missing packages from .whl/ into /tmp/site"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "pip install from .whl/ failed"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "missing: $($PY -c "
import importlib.util as u; print(' '.join(m for m in '$NEED'.split() if u.find_spec(m) is None))") and no .whl/ folder to install from"
  fi
fi
if ! $PY -c "import datasets" 2>/dev/null; then
  # transformer_lens imports `datasets` at import time for its dataset helpers, which these checks never call.
  stamp "datasets does not import here ($($PY -c 'import datasets' 2>&1 | tail -1)); using a stub"
  mkdir -p /tmp/stub/datasets
  echo "def load_dataset(*a, **k): raise ImportError('datasets is not installed (gpu_check stub)')" > /tmp/stub/datasets/load.py
  echo "class Dataset: pass" > /tmp/stub/datasets/arrow_dataset.py
  echo "class IterableDataset: pass" > /tmp/stub/datasets/iterable_dataset.py
  echo "from .load import load_dataset; from .arrow_dataset import Dataset; from .iterable_dataset import IterableDataset" > /tmp/stub/datasets/__init__.py
  export PYTHONPATH="$PYTHONPATH:/tmp/stub"
fi
smoke() {   # collapse_lab imports, and a bridge around an in-memory GPT-2 and GPT-NeoX gets its fast path
$PY - <<'EOF'
import importlib.metadata as md, platform, sys, torch
sys.path.insert(0, "benchmarks")
import collapse_lab as cl, bench
from collapse_lab import fastpath
v = {n: md.version(n) for n in ("torch", "transformers", "transformer-lens", "tokenizers")}
print("python", platform.python_version(), v, "| CUDA:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
for shape in ("cpu-small", "cpu-small-neox"):
    hf, model, cfg = bench.build(shape, dev, torch.float32)
    sites = fastpath.fast_sites(model)
    toks = torch.randint(0, 4096, (2, 16), device=dev)
    with torch.no_grad():
        err = ((cl.run(model, toks) - hf(input_ids=toks, use_cache=False).logits).norm() / model(toks).norm()).item()
    print(f"smoke {shape}: {len(sites)} fast sites, fast vs bare HF relative error {err:.1e}")
    assert len(sites) >= 16 and err < 1e-3
EOF
}
if ! smoke; then
  if ls .whl/alt/*.whl >/dev/null 2>&1; then
    stamp "smoke test failed with this machine's packages: installing the tested versions from .whl/alt/"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site_alt .whl/alt/*.whl || exit 1
    export PYTHONPATH="$PWD:/tmp/site_alt:${PYTHONPATH#"$PWD:"}"
    smoke || { echo "smoke test failed: stopping"; exit 1; }
  else
    echo "smoke test failed: stopping"; exit 1
  fi
fi
if [ "$MODE" = gpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>/dev/null || true
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device: run with --cpu"; exit 1; }
fi

# ------------------------------------------------------------------ 2. benchmarks
stamp "benchmarks"
BENCH_ARGS=(--set gpu --json "$OUTDIR/bench.json" ${BENCH_ONLY:+--only "$BENCH_ONLY"})
[ "$MODE" = cpu ] && BENCH_ARGS+=(--device cpu)
timeout "${BENCH_TIMEOUT:-200}" $PY benchmarks/bench.py "${BENCH_ARGS[@]}"
BENCH_RC=$?
[ $BENCH_RC -ne 0 ] && echo "bench.py exited with $BENCH_RC"

# ------------------------------------------------------------------ 3. host synchronisations per pass
DEV=cuda; [ "$MODE" = cpu ] && DEV=cpu
if $PY -c "import pytest" 2>/dev/null; then
  stamp "host synchronisations of the interventions (tests/test_host_sync.py; on CUDA also torch's sync-debug mode)"
  $PY -m pytest -q -p no:cacheprovider tests/test_host_sync.py 2>&1 | tail -15
  SYNC_RC=${PIPESTATUS[0]}
else
  echo "pytest is not installed here: tests/test_host_sync.py skipped"; SYNC_RC=0
fi

# ------------------------------------------------------------------ 4. tutorials and widgets on the device
stamp "tutorials (quick) and widget callbacks, models forced onto $DEV"
# shellcheck disable=SC2086
$PY benchmarks/run_notebooks.py ${NOTEBOOKS:-} --device "$DEV" --timeout "${NB_TIMEOUT:-200}" \
    --parallel "${NB_PARALLEL:-8}" --json "$OUTDIR/notebooks.json"
NB_RC=$?

stamp "done: bench rc=$BENCH_RC, host-sync tests rc=$SYNC_RC, notebooks rc=$NB_RC"
[ $BENCH_RC -eq 0 ] && [ $SYNC_RC -eq 0 ] && [ $NB_RC -eq 0 ]
