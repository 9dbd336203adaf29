#!/usr/bin/env bash
# CUDA build and GPU figures on a machine with an NVIDIA GPU and no network (README, "GPU
# build"): the llama-cpp-python wheel built with the README's CUDA flags, greedy equality of
# the batching engine with every layer offloaded, and bench/concurrency.py on a synthetic
# 7B-class GGUF against llama-server built in the same CMake tree.
#
# Inputs in $CARRY (default .devcarry): the pinned sdist trimmed of its vendored models/ and
# docs/ (lcp-*.tar.xz), the wheels of diskcache and gguf, the default model's tokenizer
# (tokenizer.gguf, from `synthetic_gguf.py --tokenizer-only`) and the default model (whole,
# or in parts smollm2.part-* when a transfer limit splits it, with smollm2.sha256).
#
#   bench/device_cuda.sh start     unpack and start the build in its own session, return
#   bench/device_cuda.sh measure   wait for the build, then measure; figures go to $OUT
#   bench/device_cuda.sh all       both in one go
#   bench/device_cuda.sh prebuilt  no build: $CARRY/prebuilt.tar.xz holds site/ (llama_cpp
#                                  with CUDA libraries, gguf, diskcache), bin/llama-server
#                                  and tokenizer.gguf, built elsewhere for this GPU; runs the
#                                  concurrency bench with flash attention on, then off
set -uo pipefail

STAGE=${1:?usage: device_cuda.sh start|measure|all}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CARRY=${CARRY:-$ROOT/.devcarry}
WORK=${WORK:-/tmp/wecom-gpu}
OUT=${OUT:-$WORK/out}
JOBS=${JOBS:-$(nproc)}
MODEL=$WORK/SmolLM2-135M-Instruct.Q4_1.gguf
SYNTHETIC=$WORK/synthetic-7b-q4_k.gguf
# The README's GPU build flags, plus llama-server and its tools in the same tree for (c);
# the UI is not fetched (no network).
CUDA_CMAKE_ARGS="-DGGML_CUDA=on -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF"
mkdir -p "$WORK" "$OUT"

take_carry() {
    cp -f "$CARRY"/* "$WORK"/ 2>/dev/null || true
}

build() {
    cd "$WORK" || exit 1
    python3 -m pip install -q --no-index --no-deps --target "$WORK/site" "$WORK"/diskcache-*.whl \
        "$WORK"/gguf-*.whl || { touch "$WORK/build.failed"; exit 1; }
    tar xJf "$WORK"/lcp-*.tar.xz
    PYTHONPATH=$WORK/site python3 "$ROOT/bench/synthetic_gguf.py" "$SYNTHETIC" \
        --tokenizer-from "$WORK/tokenizer.gguf" >"$WORK/synthetic.txt" 2>&1 &
    local started=$SECONDS
    CMAKE_ARGS=$CUDA_CMAKE_ARGS CMAKE_BUILD_PARALLEL_LEVEL=$JOBS \
        python3 -m pip wheel --no-deps --no-build-isolation --no-cache-dir -w "$WORK/wheels" \
        --config-settings=build-dir="$WORK/build" "$WORK"/llama_cpp_python-*/ \
        || { touch "$WORK/build.failed"; exit 1; }
    echo "wheel built in $((SECONDS - started)) s"
    python3 -m pip install -q --no-index --no-deps --target "$WORK/site" "$WORK"/wheels/*.whl \
        || { touch "$WORK/build.failed"; exit 1; }
    wait
    touch "$WORK/build.done"
}

start() {
    take_carry
    rm -f "$WORK/build.done" "$WORK/build.failed"
    # A session of its own, so the build outlives this call.
    setsid nohup bash "$ROOT/bench/device_cuda.sh" build >"$WORK/build.log" 2>&1 </dev/null &
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
        --format=csv | tee "$OUT/gpu.txt"
    { python3 --version; nvcc --version | tail -2; nproc; } | tee -a "$OUT/gpu.txt"
}

measure() {
    local deadline=$((SECONDS + ${MEASURE_SECONDS:-560}))
    local summary=$OUT/summary.txt
    take_carry
    if [ ! -f "$MODEL" ]; then
        cat "$WORK"/smollm2.part-* >"$MODEL"
    fi
    (cd "$WORK" && sha256sum -c smollm2.sha256) | tee -a "$summary" || exit 1
    export PYTHONPATH=$WORK/site
    export PYTHONUNBUFFERED=1
    while [ ! -f "$WORK/build.done" ] && [ ! -f "$WORK/build.failed" ]; do sleep 2; done
    tail -c 1000000 "$WORK/build.log" >"$OUT/build.log"
    if [ -f "$WORK/build.failed" ]; then
        echo "build failed"
        tail -60 "$WORK/build.log"
        exit 1
    fi
    { grep "wheel built in" "$WORK/build.log"; cat "$WORK/synthetic.txt"; } | tee -a "$summary"
    python3 - <<'PY' 2>&1 | tee -a "$summary"
import llama_cpp, torch
print("llama_supports_gpu_offload:", bool(llama_cpp.llama_supports_gpu_offload()))
# Device-to-device copy, bytes read + written: the practical memory-bandwidth ceiling.
n = 4 << 30
a = torch.empty(n, dtype=torch.uint8, device="cuda")
b = torch.empty_like(a)
for _ in range(3):
    b.copy_(a)
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(10):
    b.copy_(a)
end.record()
torch.cuda.synchronize()
print(f"copy bandwidth: {2 * n * 10 / (start.elapsed_time(end) / 1000) / 1e12:.2f} TB/s")
PY
    python3 "$ROOT/bench/greedy_equality.py" --model "$MODEL" --n-gpu-layers -1 --requests 16 \
        --concurrency 1,8 --max-tokens 64 --json >"$OUT/greedy.json" 2>>"$summary"
    echo "greedy equality exit $?" | tee -a "$summary"
    cat "$OUT/greedy.json"
    local server
    server=$(find "$WORK/build" -name llama-server -type f -perm -u+x | head -1)
    echo "llama-server: $server" | tee -a "$summary"
    # SIGTERM before the call's own limit: the bench then reports the levels it finished.
    timeout --signal=TERM $((deadline - SECONDS)) \
        python3 "$ROOT/bench/concurrency.py" --engines a,c --concurrency "${LEVELS:-1,8,32,64}" \
        --max-tokens 128 --model "$SYNTHETIC" --n-gpu-layers -1 --server-binary "$server" \
        --threads 8 --n-batch 2048 --timeout 120 --json \
        >"$OUT/concurrency.json" 2>"$OUT/concurrency.log"
    echo "concurrency exit $?" | tee -a "$summary"
    cat "$OUT/concurrency.log"
    cp "$ROOT"/var/bench-logs/llama-server.log "$OUT/" 2>/dev/null || true
}

prebuilt() {
    local deadline=$((SECONDS + ${MEASURE_SECONDS:-330}))
    tar xJf "$CARRY/prebuilt.tar.xz" -C "$WORK" || exit 1
    export PYTHONPATH=$WORK/site LD_LIBRARY_PATH=$WORK/site/llama_cpp/lib PYTHONUNBUFFERED=1
    python3 "$ROOT/bench/synthetic_gguf.py" "$SYNTHETIC" --tokenizer-from "$WORK/tokenizer.gguf"
    local common=(--engines a,c --max-tokens 128 --model "$SYNTHETIC" --n-gpu-layers -1
        --server-binary "$WORK/bin/llama-server" --threads 8 --n-batch 2048 --timeout 120
        --server-arg=--cache-ram --server-arg=0 --json)
    timeout --signal=TERM $((deadline - SECONDS - 60)) python3 "$ROOT/bench/concurrency.py" \
        "${common[@]}" --flash-attn --concurrency "${LEVELS:-1,8,32,64}" \
        >"$OUT/concurrency-fa.json" 2>"$OUT/concurrency-fa.log"
    echo "flash attention on: exit $?"
    cat "$OUT/concurrency-fa.log"
    timeout --signal=TERM $((deadline - SECONDS)) python3 "$ROOT/bench/concurrency.py" \
        "${common[@]}" --concurrency "${LEVELS_NO_FA:-32,1}" \
        >"$OUT/concurrency-nofa.json" 2>"$OUT/concurrency-nofa.log"
    echo "flash attention off: exit $?"
    cat "$OUT/concurrency-nofa.log"
}

case $STAGE in
start) start ;;
build) build ;;
measure) measure ;;
prebuilt) prebuilt ;;
all)
    start
    measure
    ;;
*)
    echo "unknown stage $STAGE" >&2
    exit 2
    ;;
esac
