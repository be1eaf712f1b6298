#!/usr/bin/env bash
# The whole GPU check in one command (`npm run test:cuda`): build the CPU addon and the CUDA platform package's
# binary (npm/linux-x64-cuda13, the one users install; with llama.cpp's reference and batched bench in the same
# build tree), compile the TypeScript (a type error fails the check), run every test that touches the CUDA device
# with SQLR1_REQUIRE_CUDA=1 (a CUDA test that cannot run fails instead of skipping) and SQLR1_TEST_DEVICES=cuda
# (the CPU cases and the CPU-only tests are CI's),
# SQLR1_TEST_JOBS files at a time (default 8), then the benchmarks (scripts/gpu-bench.sh) unless SQLR1_SKIP_BENCH=1. SQLR1_TEST_FILES replaces the file list.
# Logs go to $OUT (default ./gpu-out).
source "$(dirname "$0")/gpu-env.sh"
nvidia-smi -L | tee "$OUT/gpu.txt"
export SQLR1_CUDA_BUILD=prebuild/cuda
t0=$(date +%s)
{
  SQLR1_LLAMA_TOOLS=1 node scripts/prebuild.mjs --cuda --arch "${SQLR1_CUDA_ARCH_LIST:-90}" > "$OUT/build-cuda.log" 2>&1 &
  cuda_pid=$!
  # (set -e does not act inside a list followed by ||: each step is chained with &&.)
  node scripts/build-native.mjs > "$OUT/build-cpu.log" 2>&1 &&
  node scripts/build-reference.mjs --if-missing > "$OUT/build-reference.log" 2>&1 &&
  wait $cuda_pid &&
  # llama.cpp's forward and (for the benchmarks) batched bench over the CUDA build's own libllama and ggml-cuda.
  cmake --build "$SQLR1_CUDA_BUILD" --target llama-reference $([ "${SQLR1_SKIP_BENCH:-0}" = 1 ] || echo llama-batched-bench) \
    -j "$(nproc)" > "$OUT/build-llama.log" 2>&1 &&
  mkdir -p test/reference/build-cuda && cp "$SQLR1_CUDA_BUILD/bin/llama-reference" test/reference/build-cuda/
} || { tail -50 "$OUT/build-cuda.log" "$OUT/build-cpu.log" "$OUT/build-reference.log" "$OUT/build-llama.log"; exit 1; }
# The loader finds the CUDA binary as the installed platform package. A local CUDA build would be loaded first
# (bindings/cuda/build, from `npm run build:cuda`): then the tests run that one, and the log says so.
mkdir -p node_modules/@sqlr1-native && ln -sfn ../../npm/linux-x64-cuda13 node_modules/@sqlr1-native/linux-x64-cuda13
[ -e bindings/cuda/build ] && echo "note: bindings/cuda/build exists: the tests load that local CUDA build, not the package built here"
echo "builds done in $(( $(date +%s) - t0 )) s"
tsc -p tsconfig.json || { echo "tsc: type errors in lib/ (see above)"; exit 1; }
tsc -p test/tsconfig.json || { echo "tsc: type errors in test/ (see above)"; exit 1; }
if [ "${SQLR1_SKIP_BENCH:-0}" != 1 ]; then
  # The benchmark's model is prepared while the tests run.
  model=${SQLR1_BENCH_MODEL:-/tmp/sqlr1-bench/qwen2.5-3b-q4_0.gguf}
  [ -f "$model" ] || node bin/sqlr1.js make-model --shape qwen2.5-3b --type q4_0 --out "$model" > "$OUT/make-model.log" 2>&1 &
fi
t1=$(date +%s)
set +e
export SQLR1_REQUIRE_CUDA=1
# NCCL for the one-rank test (test/distributed/nccl-cuda.test.ts, which fails without it): the first libnccl.so.2
# on this machine unless one is named.
if [ -z "${SQLR1_NCCL_LIBRARY:-}" ]; then
  SQLR1_NCCL_LIBRARY=$(find /usr /opt /root /home /lib /lib64 -name 'libnccl.so.2*' -not -type d 2>/dev/null | sort | head -1)
  export SQLR1_NCCL_LIBRARY
fi
echo "NCCL library: ${SQLR1_NCCL_LIBRARY:-none found}"
# Only the CUDA cases of each file (testDevices() in test/helpers/native.ts): CI runs the CPU ones.
export SQLR1_TEST_DEVICES=cuda
# Every test file that asks for the CUDA device (through the helpers or by name).
files=${SQLR1_TEST_FILES:-$(grep -lE "testDevices|cudaSkipReason|cudaUsable|'cuda'" test/*/*.test.ts | tr '\n' ' ')}
echo "test files: $files"
# Files run side by side share the cores: each gets its slice (ggml's CPU threads spin at barriers, so
# oversubscribed cores slow every file down many times).
jobs=${SQLR1_TEST_JOBS:-8}
export SQLR1_THREADS=${SQLR1_THREADS:-$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))}
tap -j "$jobs" $files > "$OUT/test.log" 2>&1
test_rc=$?
set -e
grep -E "^(not )?ok|^# \{" "$OUT/test.log" || true
grep -E "^ +not ok" "$OUT/test.log" | head -40 || true
echo "tests done in $(( $(date +%s) - t1 )) s (exit $test_rc)"
if [ "${SQLR1_SKIP_BENCH:-0}" != 1 ]; then wait; bash scripts/gpu-bench.sh || test_rc=1; fi
# Few files come back from some machines: keep the summaries, pack the other logs.
shopt -s nullglob
logs=()
for f in "$OUT"/*.log "$OUT"/*.jsonl "$OUT"/*.json; do
  case "$(basename "$f")" in test.log|check.log) ;; *) logs+=("$(basename "$f")") ;; esac
done
if [ ${#logs[@]} -gt 0 ]; then tar -cJf "$OUT/logs.tar.xz" -C "$OUT" "${logs[@]}" && (cd "$OUT" && rm -f "${logs[@]}"); fi
exit $test_rc
