#!/usr/bin/env bash
# GPU part of the benchmark suite in one command, about 6 minutes at most.
#
#   bash benchmarks/gpu.sh        # from anywhere; results in $OUT/gpu if OUT is set,
#                                 # else benchmarks/out/gpu
#
# Prints nvidia-smi and a preflight (versions, devices, which libraries import), then runs
# benchmarks/run.py --device gpu one sub-suite at a time, each under its own `timeout`
# (T_PEAK, T_REFERENCE, T_LARGE, T_LONG seconds; override from the environment), merging into
# one suite.json, and finally rewrites suite.md and the plots from it. A sub-suite that runs
# out of time keeps the runs it finished (suite.json is rewritten after every run) and is
# marked incomplete in suite.md. The log is kept as gpu_sh.log next to the results.
#
# Sub-suites: peak (matmul peak, fp32/bf16/fp32-highest), reference (B=32 L=64 E=128 H=256:
# mtlrnn, mtlrnn autodiff, torch_lstm, jax_cudnn_lstm, flax_rnn, keras_lstm), large
# (B=256 L=128 E=512 H=1024, 2 layers, fp32 and bf16: mtlrnn, torch_lstm cuDNN,
# jax_cudnn_lstm cuDNN), long (L=256, 1024, 4096: mtlrnn lstm / mingru sequential /
# mingru associative / minlstm, torch_lstm). No internet is needed.
set -u
cd "$(dirname "$0")/.."

DEST="${OUT:+$OUT/gpu}"
DEST="${DEST:-benchmarks/out/gpu}"
mkdir -p "$DEST"
exec > >(tee -a "$DEST/gpu_sh.log") 2>&1

T_PEAK="${T_PEAK:-40}"
T_REFERENCE="${T_REFERENCE:-100}"
T_LARGE="${T_LARGE:-80}"
T_LONG="${T_LONG:-150}"
PY="${PYTHON:-python}"
START=$(date +%s)

echo "== benchmarks/gpu.sh $(date -u +%FT%TZ) -> $DEST"
echo "== nvidia-smi"
nvidia-smi || echo "[gpu.sh] nvidia-smi failed"

echo "== preflight"
"$PY" - <<'EOF'
import importlib
import os
os.environ.setdefault("KERAS_BACKEND", "jax")
for name in ("jax", "jaxlib", "flax", "optax", "torch", "keras", "matplotlib", "conllu", "yaml"):
    try:
        module = importlib.import_module(name)
        print(f"{name:12s} {getattr(module, '__version__', 'ok')}")
    except Exception as err:  # noqa: BLE001
        print(f"{name:12s} MISSING ({type(err).__name__}: {err})")
try:
    import jax
    print("jax devices:", jax.devices(), "kind:", jax.devices()[0].device_kind)
    from jax.experimental import rnn
    print("jax cuDNN RNN lowering:", "present" if getattr(rnn, "gpu_rnn", None) else "MISSING")
except Exception as err:  # noqa: BLE001
    print("jax devices: FAILED", err)
try:
    import torch
    print("torch cuda:", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
          "cudnn", torch.backends.cudnn.version())
except Exception as err:  # noqa: BLE001
    print("torch cuda: FAILED", err)
EOF

# mtlrnn imports conllu at import time (CoNLL-U reader); the benchmarks never parse CoNLL-U.
# Where it is not installed, put a stub that fails only if used on the path of this run.
if ! "$PY" -c "import conllu" 2>/dev/null; then
    STUB_DIR="$(mktemp -d)"
    cat > "$STUB_DIR/conllu.py" <<'EOF'
"""Stub from benchmarks/gpu.sh: conllu is not installed; the benchmarks never parse CoNLL-U."""


def __getattr__(name):
    raise ModuleNotFoundError("conllu is not installed (benchmarks/gpu.sh stub)")
EOF
    export PYTHONPATH="$STUB_DIR${PYTHONPATH:+:$PYTHONPATH}"
    echo "[gpu.sh] conllu missing: using a stub module from $STUB_DIR for this run"
fi
"$PY" -c "import mtlrnn; print('mtlrnn', mtlrnn.__version__, 'imports')" \
    || echo "[gpu.sh] WARNING: mtlrnn does not import; its rows will be FAILED"

suite() {  # suite SECONDS RUN_PY_ARGS...
    local limit=$1
    shift
    echo "== run.py $* (timeout ${limit}s, elapsed $(( $(date +%s) - START ))s)"
    timeout --kill-after=10 "$limit" "$PY" benchmarks/run.py --device gpu --out "$DEST" "$@"
    local rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "[gpu.sh] timed out after ${limit}s: $* (finished runs are kept)"
    elif [ "$rc" -ne 0 ]; then
        echo "[gpu.sh] exit $rc: $*"
    fi
}

suite "$T_PEAK" --only peak
suite "$T_REFERENCE" --only reference --merge
suite "$T_LARGE" --only large --merge
suite "$T_LONG" --only long --merge
"$PY" benchmarks/run.py --device gpu --report-only --out "$DEST"
echo "== done in $(( $(date +%s) - START ))s: $DEST/suite.md, $DEST/suite.json, $DEST/plots"
cat "$DEST/suite.md" 2>/dev/null | sed -n '1,/^## Matmul/p'
