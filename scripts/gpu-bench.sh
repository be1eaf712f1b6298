#!/usr/bin/env bash
# Benchmarks on a CUDA machine (`npm run bench`): sqlr1's batched generation against llama.cpp's
# llama-batched-bench built from the same ggml sources, same GPU, same model file, same run.
# Expects the CUDA addon built with SQLR1_LLAMA_TOOLS=1 (scripts/gpu-check.sh does that).
source "$(dirname "$0")/gpu-env.sh"
build=bindings/cuda/build
[ -d dist ] || tsc -p tsconfig.json
if [ ! -x "$build/bin/llama-batched-bench" ]; then
  [ -f "$build/CMakeCache.txt" ] && grep -q "SQLR1_LLAMA_TOOLS:BOOL=ON" "$build/CMakeCache.txt" || SQLR1_LLAMA_TOOLS=1 node scripts/build-native.mjs --cuda
  cmake --build "$build" --target llama-batched-bench -j "$(nproc)" > "$OUT/build-llama.log" 2>&1
fi
model=${SQLR1_BENCH_MODEL:-/tmp/sqlr1-bench/qwen2.5-3b-q4_0.gguf}
[ -f "$model" ] || node bin/sqlr1.js make-model --shape qwen2.5-3b --type q4_0 --out "$model"
pp=${SQLR1_BENCH_PP:-512}; tg=${SQLR1_BENCH_TG:-256}; npl=${SQLR1_BENCH_NPL:-8,32}
"$build/bin/llama-batched-bench" -m "$model" -c $(( 32 * (pp + tg) + 1024 )) -b 2048 -ub 512 -npp "$pp" -ntg "$tg" -npl "$npl" \
  -pps -fa on -ngl 99 --output-format jsonl > "$OUT/llama-batched-bench.jsonl" 2> "$OUT/llama-batched-bench.log" &
llama_pid=$!
mem_llama=0
while kill -0 $llama_pid 2>/dev/null; do
  m=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1); [ "$m" -gt "$mem_llama" ] && mem_llama=$m; sleep 0.2
done
wait $llama_pid
node bin/sqlr1.js bench generate --model "$model" --device cuda --prompt-tokens "$pp" --new-tokens "$tg" --batch "1,$npl" --json > "$OUT/sqlr1-bench.json" &
ours_pid=$!
mem_ours=0
while kill -0 $ours_pid 2>/dev/null; do
  m=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1); [ "$m" -gt "$mem_ours" ] && mem_ours=$m; sleep 0.2
done
wait $ours_pid
node scripts/bench-compare.mjs "$OUT/sqlr1-bench.json" "$OUT/llama-batched-bench.jsonl" "$mem_ours" "$mem_llama" | tee "$OUT/bench-table.md"
# The passes of a GRPO training step that exist so far (issue: training core), 8 x (512 + 256) tokens.
node bin/sqlr1.js bench step --model "$model" --device cuda --sequences 8 --prompt-tokens 512 --completion-tokens 256 | tee -a "$OUT/bench-table.md"
