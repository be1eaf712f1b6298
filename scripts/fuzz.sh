#!/usr/bin/env bash
# Coverage-guided fuzzing of the four GGUF readers (README: "Fuzzing").
#
#   scripts/fuzz.sh <target> <seconds>   build, fuzz for <seconds>, then merge what was found into the committed
#                                        corpus test/fuzz/corpus/<target>/ (minimized: libFuzzer -merge=1)
#   scripts/fuzz.sh build                build the three native fuzzers only
#   scripts/fuzz.sh seeds                (re)write the seed files only
#
# Targets: model (model_load), adapter (lora_adapter_load against a tiny model), state (the optimizer-state
# loader), reader (the TypeScript readGgufMetadata). The native ones are libFuzzer binaries built with clang
# -fsanitize=fuzzer,address over a ggml built here with clang and ASan; reader runs test/fuzz/reader-fuzz.ts
# (compiled with tsc), a coverage-guided loop over V8's precise block coverage. Everything built or found lives in build-fuzz/ (ignored):
# crash reproducers in build-fuzz/artifacts/<target>/, logs in build-fuzz/logs/.
#
# Environment: CC / CXX (default clang / clang++), FUZZ_JOBS (build jobs, default 2), FUZZ_ARGS (extra libFuzzer
# arguments), FUZZ_MERGE=0 (leave the committed corpus alone).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=$root/build-fuzz
CC=${CC:-clang}
CXX=${CXX:-clang++}
jobs=${FUZZ_JOBS:-2}
ggml_src=$root/native/.deps/llama.cpp/ggml
lib=$out/ggml/ggml/src
san="-fsanitize=address -fno-omit-frame-pointer -g"

target_id() {
  case "$1" in model) echo 1 ;; adapter) echo 2 ;; state) echo 3 ;; *) return 1 ;; esac
}

build_ggml() {
  [ -f "$ggml_src/CMakeLists.txt" ] || node scripts/fetch-ggml.mjs
  # ggml with ASan and libFuzzer's coverage counters, so gguf's parser is guided and checked too. Configured through
  # the project's CMakeLists (the same ggml options as the addon); only ggml's libraries are built.
  if [ ! -f "$out/ggml/build.ninja" ]; then
    cmake -G Ninja -S "$root" -B "$out/ggml" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_C_COMPILER="$CC" -DCMAKE_CXX_COMPILER="$CXX" \
      -DCMAKE_C_FLAGS="$san -fsanitize=fuzzer-no-link" -DCMAKE_CXX_FLAGS="$san -fsanitize=fuzzer-no-link" \
      -DGGML_NATIVE=OFF >/dev/null
  fi
  cmake --build "$out/ggml" --target ggml ggml-base ggml-cpu -j "$jobs" >/dev/null
}

build_target() {
  local name=$1 id
  id=$(target_id "$name")
  local bin=$out/fuzz-$name
  local srcs=(test/fuzz/fuzz_targets.cpp native/src/common.cpp native/src/model.cpp native/src/lora.cpp native/src/adamw.cpp native/src/synth.cpp)
  local newest
  newest=$(ls -t "${srcs[@]}" native/src/*.h "$lib/libggml-base.a" | head -1)
  if [ -x "$bin" ] && [ "$bin" -nt "$newest" ]; then return; fi
  echo "[fuzz] building $bin" >&2
  "$CXX" -std=c++17 -O1 $san -fsanitize=fuzzer -DSQLR1_FUZZ_TARGET="$id" \
    -Inative/src -I"$ggml_src/include" "${srcs[@]}" \
    "$lib/libggml.a" "$lib/libggml-cpu.a" "$lib/libggml-base.a" -lpthread -lm -o "$bin"
}

build_all() {
  build_ggml
  for t in model adapter state; do build_target "$t"; done
}

# Seeds: small files the project's own writers produce (adapters and optimizer states through the harness, models
# through the tests' GGUF writer); the reader gets all of them.
write_seeds() {
  rm -rf "$out/seeds"
  mkdir -p "$out/seeds"/{model,adapter,state,reader}
  SQLR1_FUZZ_WRITE_SEEDS=$out/seeds/adapter "$out/fuzz-adapter" >/dev/null 2>&1
  SQLR1_FUZZ_WRITE_SEEDS=$out/seeds/state "$out/fuzz-state" >/dev/null 2>&1
  node --import=@tapjs/typescript/import test/fuzz/make-seeds.ts "$out/seeds/model"
  cp "$out/seeds"/{model,adapter,state}/* "$out/seeds/reader/"
}

cmd=${1:-}
case "$cmd" in
  build) build_all; exit 0 ;;
  seeds) build_all; write_seeds; exit 0 ;;
  model|adapter|state|reader) ;;
  *) echo "usage: scripts/fuzz.sh <model|adapter|state|reader> <seconds> | build | seeds" >&2; exit 2 ;;
esac
secs=${2:?seconds}
build_all
[ -d "$out/seeds/$cmd" ] || write_seeds
corpus=$root/test/fuzz/corpus/$cmd
mkdir -p "$corpus" "$out/corpus/$cmd" "$out/artifacts/$cmd" "$out/logs"
log=$out/logs/$cmd-$(date -u +%Y%m%dT%H%M%SZ).log
echo "[fuzz] $cmd for $secs s; log $log" >&2

if [ "$cmd" = reader ]; then
  # Compiled to plain JavaScript first: V8's coverage reports every function of every script in the process, and
  # a TypeScript loader would add the whole compiler to each report.
  rm -rf "$out/reader-js"
  npx tsc --outDir "$out/reader-js" --rootDir . --module nodenext --moduleResolution nodenext --target es2022 --types node \
    --skipLibCheck --strict test/fuzz/reader-fuzz.ts
  fuzzer=$out/reader-js/test/fuzz/reader-fuzz.js
  nice -n 19 node "$fuzzer" --seconds "$secs" \
    --artifacts "$out/artifacts/reader" "$out/corpus/reader" "$corpus" "$out/seeds/reader" 2>&1 | tee "$log" | grep -v '^#[0-9]* NEW' || true
  if [ "${FUZZ_MERGE:-1}" != 0 ]; then
    rm -rf "$out/merged/reader" && mkdir -p "$out/merged/reader"
    nice -n 19 node "$fuzzer" --merge "$out/merged/reader" "$corpus" "$out/corpus/reader" "$out/seeds/reader" 2>&1 | tee -a "$log"
    rm -rf "$corpus" && cp -r "$out/merged/reader" "$corpus"
  fi
else
  # -timeout: a load over 10 s is a hang; -rss_limit_mb also caps single mallocs, so an allocation of what a file
  # declares rather than what it holds shows up as a finding.
  # shellcheck disable=SC2086
  nice -n 19 "$out/fuzz-$cmd" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/$cmd/" ${FUZZ_ARGS:-} "$out/corpus/$cmd" "$corpus" "$out/seeds/$cmd" 2>&1 | tee "$log" | grep -v '^#[0-9]*\s*\(NEW\|REDUCE\|pulse\)' || true
  if [ "${FUZZ_MERGE:-1}" != 0 ]; then
    rm -rf "$out/merged/$cmd" && mkdir -p "$out/merged/$cmd"
    nice -n 19 "$out/fuzz-$cmd" -merge=1 -timeout=10 -rss_limit_mb=2048 "$out/merged/$cmd" "$corpus" "$out/corpus/$cmd" "$out/seeds/$cmd" >>"$log" 2>&1
    rm -rf "$corpus" && cp -r "$out/merged/$cmd" "$corpus"
  fi
fi
echo "[fuzz] corpus $corpus: $(ls "$corpus" | wc -l) files, $(du -sk "$corpus" | cut -f1) KiB; findings in $out/artifacts/$cmd: $(ls "$out/artifacts/$cmd" | wc -l)" >&2
