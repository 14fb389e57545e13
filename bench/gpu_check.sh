#!/usr/bin/env bash
# The one GPU check: run from a plain checkout on a CUDA machine (an H100), no install, no
# network, about 5 minutes:
#
#     bash bench/gpu_check.sh            # GPU tests, then the priority benchmark subset
#     bash bench/gpu_check.sh --diag     # ... and the diagnostics below (about 1 minute more)
#     bash bench/gpu_check.sh --full     # the whole test suite and the full benchmark suite
#     bash bench/gpu_check.sh --full --no-tests --only network   # one full section per call
#
# Diagnostics: host time per call of the reversible node's layers next to SpikingJelly's
# Triton LIF (python -m bench.sweep --host), and where the peak memory of a ResNet-18 training
# step goes (python -m bench.peak: also the op inside which the allocator peaked, and the
# memory ops took and gave back, e.g. cuDNN workspaces; then the reversible step again with the
# allocator capped at 1536 MiB).
#
# Needs only python3 with torch, triton, numpy and pytest (torch 2.11 / triton 3.6 or newer).
# Results: bench/results/gpu/<section>/*.csv|.md|.png, a log per step in bench/results/gpu/,
# and a short summary table printed last. Exit status 0 only when every step passed.
#
# Peer libraries (SpikingJelly, snnTorch, Norse): those the machine lacks are installed, with
# --no-deps, into bench/wheels/site (git-ignored; delete it to reinstall) from wheels in
# bench/wheels/ (git-ignored,
# never committed). Fill that folder on a machine with network access (norse 1.1.0 ships as a
# source archive only, so build wheels rather than download them):
#
#     pip wheel --no-deps -w bench/wheels -r requirements-peers.txt
#
# h5py is the one platform-specific wheel (norse imports nir, nir imports h5py); if the GPU
# machine runs another Python version than the one that built the wheels, add its h5py:
#
#     pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --platform manylinux_2_28_x86_64 -d bench/wheels h5py==3.16.0
#
# Without them the script still runs; the benchmark tables show the rows it could not measure
# as "missing: <library> not installed".
#
# Environment: PYTHON (default python3), TEST_TIMEOUT, BENCH_TIMEOUT (seconds, per step), and
# REVSNN_GPU_CHECK_ALLOW_CPU=1 to rehearse the script on a machine without a GPU (it then runs
# the CPU test subset and `python -m bench --tiny`; no GPU figure comes out of that).
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
FULL=0
TESTS_ON=1
DIAG=0
SECTIONS="kernels network memory"
while [ $# -gt 0 ]; do
    case "$1" in
        --full) FULL=1 ;;
        --no-tests) TESTS_ON=0 ;;
        --diag) DIAG=1 ;;
        --only) shift; SECTIONS=$(echo "${1:-}" | tr ',' ' ') ;;
        -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (use --full, --diag, --no-tests, --only SECTIONS or" \
                "--help)" >&2
           exit 2 ;;
    esac
    shift
done
for section in $SECTIONS; do
    case " kernels network memory " in *" $section "*) ;; *)
        echo "unknown section for --only: $section (kernels, network, memory)" >&2
        exit 2 ;;
    esac
done
OUT=bench/results/gpu
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
STATUS=()  # "step | result | seconds" lines for the summary
FAILED=0   # the exit status: 1 if any step failed or timed out

have_timeout=0
command -v timeout >/dev/null 2>&1 && have_timeout=1
run_step() {  # run_step NAME SECONDS COMMAND...: one independent step, logged, time-limited
    local name=$1 limit=$2 rc start
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    start=$(date +%s)
    if [ "$have_timeout" = 1 ]; then
        timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    else
        "$@" 2>&1 | tee "$OUT/$name.log"
    fi
    rc=${PIPESTATUS[0]}
    case $rc in
        0) res="ok" ;;
        124|137) res="TIMEOUT after ${limit}s (partial results kept)"; FAILED=1 ;;
        *) res="exit $rc (see $OUT/$name.log)"; FAILED=1 ;;
    esac
    STATUS+=("$name | $res | $(( $(date +%s) - start ))")
}

# -- 0. the machine ---------------------------------------------------------------------------
echo "=== machine"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L
if ! "$PY" -c "import torch, triton, numpy, pytest" 2>/dev/null; then
    echo "$PY cannot import torch, triton, numpy and pytest: nothing to run" >&2
    exit 1
fi
"$PY" - <<'EOF'
import torch, triton
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
      f"GPU: {torch.cuda.get_device_name() if cuda else 'none'}")
EOF
GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$GPU" != 1 ] && [ "${REVSNN_GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
    echo "no CUDA device: this script is for a GPU machine (REVSNN_GPU_CHECK_ALLOW_CPU=1 to" \
         "rehearse it on CPU)" >&2
    exit 1
fi
# compiled kernels on a GPU, whatever tests/conftest.py guesses from /dev
[ "$GPU" = 1 ] && export TRITON_INTERPRET=0
# each section's folder is replaced when it runs (no table of an earlier run may pass for this
# one's); the sections of earlier calls (one section per call) stay
mkdir -p "$OUT"

# -- 1. peers from local wheels, if any are missing ---------------------------------------------
SITE=bench/wheels/site
missing=$("$PY" - <<'EOF'
import importlib
out = []
for name in ("spikingjelly", "snntorch", "norse"):
    try:
        importlib.import_module(name)
    except Exception:
        out.append(name)
print(" ".join(out))
EOF
)
if [ -n "$missing" ]; then
    echo "=== peers missing here: $missing"
    if ls bench/wheels/*.whl >/dev/null 2>&1; then
        if [ ! -d "$SITE" ]; then
            if "$PY" -m pip --version >/dev/null 2>&1; then
                # one requirement at a time: a wheel for another Python must not block the rest
                grep -v '^\s*#' requirements-peers.txt | grep -v '^\s*$' | while read -r req; do
                    "$PY" -m pip install --quiet --no-deps --no-index --find-links bench/wheels \
                        --target "$SITE" "$req" || echo "could not install $req" >&2
                done
            else  # no pip: a wheel is a zip laid out for site-packages
                "$PY" - "$SITE" bench/wheels/*.whl <<'EOF'
import sys, zipfile
for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])
EOF
            fi
        fi
        export PYTHONPATH="$PYTHONPATH:$ROOT/$SITE"
    else
        echo "no wheels in bench/wheels/ (see the header of this script): their rows will" \
             "show as missing" >&2
    fi
    "$PY" -c "
import importlib
for n in ('spikingjelly', 'snntorch', 'norse'):
    try:
        importlib.import_module(n); print(n, 'importable')
    except Exception as e:
        print(n, 'MISSING:', type(e).__name__, str(e)[:100])"
fi

# -- 2. GPU tests first -----------------------------------------------------------------------
TESTS="tests/test_rev_lif.py tests/test_lif.py tests/test_parity.py tests/test_blocks.py"
# Triton compiles each specialisation on first use; pytest-xdist, where installed, spreads that
# over the CPU cores (the tests share nothing but the compile cache). 667 of these tests took
# 113 s on 8 workers on the H200 (064a9dc); they are 976 now, hence every core and more time.
XDIST=""
CORES=$(nproc 2>/dev/null || echo 8)
[ "$CORES" -gt 16 ] && CORES=16
"$PY" -c "import xdist" 2>/dev/null && XDIST="-n $CORES"
if [ "$TESTS_ON" = 0 ]; then
    echo "=== tests skipped (--no-tests)"
elif [ "$FULL" = 1 ]; then
    # shellcheck disable=SC2086
    run_step tests "${TEST_TIMEOUT:-1800}" "$PY" -m pytest -q -p no:cacheprovider $XDIST \
        --durations=10 tests
elif [ "$GPU" = 1 ]; then
    # shellcheck disable=SC2086
    run_step tests "${TEST_TIMEOUT:-240}" "$PY" -m pytest -q -p no:cacheprovider $XDIST \
        --durations=5 $TESTS
else
    run_step tests "${TEST_TIMEOUT:-120}" "$PY" -m pytest -q -p no:cacheprovider \
        tests/test_rev_lif.py -k "kept_for_backward"
fi

# -- 3. benchmarks: each section on its own, time-limited, most valuable first ------------------
if [ "$FULL" = 1 ]; then
    SIZE=""
    LIMITS="kernels:${BENCH_TIMEOUT:-1800} network:${BENCH_TIMEOUT:-1800}"
    LIMITS="$LIMITS memory:${BENCH_TIMEOUT:-900}"
elif [ "$GPU" = 1 ]; then
    SIZE="--priority"
    LIMITS="kernels:${BENCH_TIMEOUT:-90} network:${BENCH_TIMEOUT:-50} memory:${BENCH_TIMEOUT:-30}"
else
    SIZE="--tiny"
    LIMITS="kernels:${BENCH_TIMEOUT:-120} network:${BENCH_TIMEOUT:-120}"
    LIMITS="$LIMITS memory:${BENCH_TIMEOUT:-120}"
fi
DIRS=""
for item in $LIMITS; do
    section=${item%%:*}
    case " $SECTIONS " in *" $section "*) ;; *) continue ;; esac
    # shellcheck disable=SC2086
    rm -rf "${OUT:?}/$section"
    run_step "bench-$section" "${item##*:}" "$PY" -m bench $SIZE --only "$section" \
        --no-summary --out "$OUT/$section"
    DIRS="$DIRS $OUT/$section"
done

# -- 4. diagnostics: where the host time and the peak memory go ---------------------------------
if [ "$DIAG" = 1 ] && [ "$GPU" != 1 ]; then
    echo "=== --diag: skipped without a GPU (python -m bench.sweep --host and python -m" \
         "bench.peak run on CPU by hand)"
fi
if [ "$DIAG" = 1 ] && [ "$GPU" = 1 ]; then
    run_step host-time "${BENCH_TIMEOUT:-60}" "$PY" -m bench.sweep --host
    run_step peak-memory "${BENCH_TIMEOUT:-90}" "$PY" -m bench.peak --model resnet18 --T 16 \
        --batch 32
    # 1536 MiB is a third of SpikingJelly's measured peak (4736 MiB): does the reversible step
    # fit there once cuDNN has to pick convolution algorithms with smaller workspaces?
    run_step peak-capped "${BENCH_TIMEOUT:-90}" "$PY" -m bench.peak --model resnet18 --T 16 \
        --batch 32 --variant revlif-rev --cap-mib 1536
fi

# -- 5. summary last --------------------------------------------------------------------------
echo
echo "## gpu_check steps"
echo
echo "| step | result | seconds |"
echo "|---|---|---|"
for line in "${STATUS[@]}"; do echo "| $line |"; done
echo
# shellcheck disable=SC2086
"$PY" -m bench.summary --out $DIRS || echo "(summary failed: see the tables under $OUT)"
echo "Tables: $OUT/<section>/*.md (copy what you report into bench/RESULTS.md with its card," \
     "date and command)."
exit $FAILED
