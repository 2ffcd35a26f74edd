#!/usr/bin/env bash
# The GPU checks and benchmarks of one lent device session, each step under its own timeout, in one command:
#   bash bench/gpu_session.sh
# It expects the packages the GPU image lacks as wheels in .whl/ (optuna and its needs) and the MNIST test set's
# two files in .mnist/ (both gitignored, carried by the device tool). Each step's output goes to $OUT/STEP.txt
# and the last lines of it to stdout (SKIP='loop pack' leaves steps out; SEED sets the searches' first seed; TESTK
# is a pytest -k filter for the tests step; REPEATS the overhead step's rounds); the search dumps come back as one
# archive.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" /tmp/dumps
if ls .whl/*.whl >/dev/null 2>&1; then
    rm -rf /tmp/site  # a warm machine keeps the last call's packages
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
if [ -d .mnist ] && [ ! -d ../shared/data/mnist-t10k ]; then
    mkdir -p ../shared/data && cp -r .mnist ../shared/data/mnist-t10k
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
ls /proc/driver/nvidia/version  # where present, cnnsearch starts its forkserver early for --device auto
python3 -c "import torch, optuna; print('torch', torch.__version__, 'optuna', optuna.__version__, 'cuda', torch.cuda.is_available())" \
    || exit 1

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    case " ${SKIP:-} " in *" $name "*) echo "=== $name: skipped"; return ;; esac
    echo "=== $name ($(date +%T), limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    echo "--- rc=$? in $((SECONDS - t0))s"
    grep -v '^\s*$' "$OUT/$name.txt" | tail -n "${TAIL:-25}"
}

step tests 90 python3 -m pytest tests/test_cuda.py tests/test_devices.py -q -s -p no:cacheprovider ${TESTK:+-k "$TESTK"}
step overhead 200 python3 -m bench.bench_run_overhead --device cuda --workers 4 1 --starts spawn forkserver \
    --repeats "${REPEATS:-2}"
step loop 90 python3 -m bench.bench_loop --device cuda --extras --samples 10000 --epochs 4 --repeats 5
step loop_bf16 50 python3 -m bench.bench_loop --device cuda --precision bf16 --samples 10000 --epochs 2 --repeats 3
step pack 80 python3 -m bench.bench_pack --device cuda --samples 4000 --epochs 2 --repeats 3
step vs_mnist 235 python3 -m bench.bench_vs_script --dataset mnist --trials 20 --epochs 5 --max-samples 5000 \
    --seed "${SEED:-1}" --repeats 2 --dump /tmp/dumps/gpu_vsm
step vs_digits 180 python3 -m bench.bench_vs_script --dataset digits --trials 30 --epochs 10 --seed "${SEED:-1}" \
    --repeats 1 --dump /tmp/dumps/gpu_vsd
tar -czf "$OUT/dumps.tgz" -C /tmp dumps
