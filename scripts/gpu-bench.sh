#!/usr/bin/env bash
# Benchmarks on a CUDA machine (`npm run bench`): sqlr1's batched generation against llama.cpp's
# llama-batched-bench built from the same ggml sources, same GPU, same model file, same run; then one GRPO
# training step pass by pass. Expects a CUDA build tree with llama.cpp's tools (SQLR1_LLAMA_TOOLS=1):
# SQLR1_CUDA_BUILD (scripts/gpu-check.sh sets it to its prebuild/cuda), else a local build in bindings/cuda/build.
source "$(dirname "$0")/gpu-env.sh"
build=${SQLR1_CUDA_BUILD:-bindings/cuda/build}
[ -d dist ] || tsc -p tsconfig.json
if [ ! -x "$build/bin/llama-batched-bench" ]; then
  [ -f "$build/CMakeCache.txt" ] && grep -q "SQLR1_LLAMA_TOOLS:BOOL=ON" "$build/CMakeCache.txt" || SQLR1_LLAMA_TOOLS=1 node scripts/build-native.mjs --cuda
  cmake --build "$build" --target llama-batched-bench -j "$(nproc)" > "$OUT/build-llama.log" 2>&1
fi
model=${SQLR1_BENCH_MODEL:-/tmp/sqlr1-bench/qwen2.5-3b-q4_0.gguf}
[ -f "$model" ] || node bin/sqlr1.js make-model --shape qwen2.5-3b --type q4_0 --out "$model"
pp=${SQLR1_BENCH_PP:-512}; tg=${SQLR1_BENCH_TG:-256}; npl=${SQLR1_BENCH_NPL:-8,32}

# peak_mem OUT CMD...: runs CMD in the background with its stdout in OUT (stderr in OUT.log) and prints the peak
# GPU memory (MiB) seen while it runs (nvidia-smi every 0.2 s).
peak_mem() {
  local out=$1; shift
  "$@" > "$out" 2> "$out.log" &
  local pid=$! peak=0 m
  while kill -0 $pid 2>/dev/null; do
    m=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1); [ "$m" -gt "$peak" ] && peak=$m; sleep 0.2
  done
  wait $pid
  echo $peak
}
# llama-batched-bench needs a context that holds the largest batch's sequences.
max_npl=$(tr ',' '\n' <<< "$npl" | sort -n | tail -1)
mem_llama=$(peak_mem "$OUT/llama-batched-bench.jsonl" "$build/bin/llama-batched-bench" -m "$model" -c $(( max_npl * (pp + tg) + 1024 )) \
  -b 2048 -ub 512 -npp "$pp" -ntg "$tg" -npl "$npl" -pps -fa on -ngl 99 --output-format jsonl)
mem_ours=$(peak_mem "$OUT/sqlr1-bench.json" node bin/sqlr1.js bench generate --model "$model" --device cuda \
  --prompt-tokens "$pp" --new-tokens "$tg" --batch "1,$npl" --json)
node scripts/bench-compare.mjs "$OUT/sqlr1-bench.json" "$OUT/llama-batched-bench.jsonl" "$mem_ours" "$mem_llama" | tee "$OUT/bench-table.md"
# One GRPO training step, 8 x (512 + 256) tokens, LoRA r=16 alpha=32 on all linear layers, pass by pass, with the
# peak GPU memory of the whole process; targets: policy forward + backward + step <= 0.46 s, peak <= 11 GiB.
mem_step=$(peak_mem "$OUT/bench-step.md" node bin/sqlr1.js bench step --model "$model" --device cuda --sequences 8 \
  --prompt-tokens 512 --completion-tokens 256 --rank 16 --alpha 32)
{ cat "$OUT/bench-step.md"; echo "peak GPU memory of the whole bench-step process (nvidia-smi every 0.2 s): $mem_step MiB (target <= 11264 MiB)"; } | tee -a "$OUT/bench-table.md"
# Whole GRPO steps (`sqlr1 bench grpo`: rollouts forced to the full 256 tokens, rewards on a SQLite database, the
# reference pass, policy forward and backward, AdamW), LoRA r=16 alpha=32 on all linear layers, beta 0.05, at
# prompts x completions 1x8, 8x8, 8x16 and 8x32, each with the peak GPU memory of its whole process.
# Targets: 1x8 <= 1.6 s and 8x8 <= 6 s per step, peak <= 16 GiB at 8x8 (TRL's GRPOTrainer: 16.7 s and 31.6 s).
tmp_grpo=$(mktemp -d)
for shape in ${SQLR1_BENCH_GRPO:-1x8 8x8 8x16 8x32}; do
  p=${shape%x*}; g=${shape#*x}
  mem_grpo=$(peak_mem "$tmp_grpo/grpo-$shape.md" node bin/sqlr1.js bench grpo --model "$model" --device cuda --prompts "$p" \
    --generations "$g" --prompt-tokens "$pp" --completion-tokens "$tg" --rank 16 --alpha 32 --beta 0.05 --steps "${SQLR1_BENCH_STEPS:-3}")
  { echo; echo "### bench grpo $shape"; cat "$tmp_grpo/grpo-$shape.md" "$tmp_grpo/grpo-$shape.md.log";
    echo "peak GPU memory of the whole bench-grpo process (nvidia-smi every 0.2 s): $mem_grpo MiB"; } | tee -a "$OUT/bench-table.md"
done
