#!/usr/bin/env bash
# The CUDA platform package on a CUDA machine without network, in two steps (one call each; the build folder
# prebuild/cuda and /tmp survive between calls while the machine stays warm):
#
#   bash scripts/gpu-packages.sh build [ARCHS]  CUDA prebuild (npm run prebuild:cuda --arch ARCHS; default: the prebuild's 80,86,89,90) into
#                                               npm/linux-x64-cuda13; stops after SQLR1_BUILD_LIMIT s (default
#                                               540) with exit 75: run the same command again to resume
#   bash scripts/gpu-packages.sh test           packs it, installs all three tarballs into a fresh folder offline
#                                               (no compile allowed), and runs `sqlr1 bench generate --device cuda`
#                                               from the installed package
#
# Before, on a machine with network: `npm run prebuild && bash scripts/pack-gpu.sh --packages` (fills .gpu/:
# Node, node_modules, the ggml source, the npm CLI, the main and CPU tarballs). Results go to $OUT.
source "$(dirname "$0")/gpu-env.sh"
step=${1:?usage: gpu-packages.sh build [ARCHS] | test}

if [ "$step" = build ]; then
  nvidia-smi -L | tee "$OUT/gpu.txt"
  set +e
  node scripts/prebuild.mjs --cuda ${2:+--arch "$2"} --time-limit "${SQLR1_BUILD_LIMIT:-540}" > "$OUT/prebuild-cuda.log" 2>&1
  rc=$?
  set -e
  tail -40 "$OUT/prebuild-cuda.log"
  [ -f npm/linux-x64-cuda13/lib/build-info.json ] && [ $rc = 0 ] && cp npm/linux-x64-cuda13/lib/build-info.json "$OUT/build-info-cuda.json"
  exit $rc
fi

[ "$step" = test ] || { echo "unknown step $step" >&2; exit 2; }
[ -f npm/linux-x64-cuda13/lib/sqlr1.node ] || { echo "no CUDA prebuild: run gpu-packages.sh build first" >&2; exit 1; }
[ -f .gpu/npm-cli.tar.xz ] && ls .gpu/packages/*.tgz > /dev/null || { echo ".gpu/packages or .gpu/npm-cli.tar.xz missing: run scripts/pack-gpu.sh --packages on the machine with network" >&2; exit 1; }
command -v npm > /dev/null 2>&1 || { tar -xJf .gpu/npm-cli.tar.xz -C /tmp; npm() { node /tmp/npm/bin/npm-cli.js "$@"; }; }

work=/tmp/sqlr1-gpu-packages
rm -rf "$work" && mkdir -p "$work"/{app,fakebin}
cp .gpu/packages/*.tgz "$work/app/"
(cd npm/linux-x64-cuda13 && npm pack --ignore-scripts --pack-destination "$work/app" --json) > "$OUT/pack-cuda.json"
printf '#!/bin/sh\necho "cmake $*" >> %s/cmake-called\necho "cmake was called: an installed package tried to compile" >&2\nexit 97\n' "$work" > "$work/fakebin/cmake"
chmod +x "$work/fakebin/cmake"
export PATH="$work/fakebin:$PATH"
# No registry here: the dependencies are placed first from the carried node_modules (better-sqlite3 already built
# for this Node), so npm resolves them without a fetch; our three packages come from their tarballs, and their
# install scripts run (with the failing cmake first on PATH).
mkdir -p "$work/app/node_modules" && cp -a "$root/node_modules/." "$work/app/node_modules/"
rm -rf "$work/app/node_modules/.package-lock.json" "$work/app/node_modules/sqlr1-native" "$work/app/node_modules/@sqlr1-native"
cd "$work/app"
echo '{ "name": "sqlr1-gpu-install-check", "version": "1.0.0", "private": true, "type": "module" }' > package.json
ls -l *.tgz | tee "$OUT/tarballs.txt"
t0=$(date +%s.%N)
npm install ./*.tgz --offline --no-audit --no-fund --foreground-scripts --timing --logs-dir "$work/logs" 2>&1 | tail -8
t1=$(date +%s.%N)
echo "offline install of the three tarballs: $(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }") s" | tee "$OUT/install-time.txt"
grep -o '"build:run:[^"]*":[0-9]*' "$work"/logs/*-timing.json | tee -a "$OUT/install-time.txt" || true
fail=0
[ -f "$work/cmake-called" ] && { echo "FAIL: cmake was called:"; cat "$work/cmake-called"; fail=1; }
[ -e node_modules/sqlr1-native/bindings/cuda/build ] && { echo "FAIL: a CUDA build folder appeared"; fail=1; }
ls node_modules/@sqlr1-native/ | tee -a "$OUT/tarballs.txt"
for f in node_modules/@sqlr1-native/*/lib/sqlr1.node; do
  echo "$f: glibc >= $(objdump -T "$f" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 | cut -d_ -f2); needs $(objdump -p "$f" | awk '/NEEDED/{print $2}' | tr '\n' ' ')"
done | tee "$OUT/glibc.txt"

model=${SQLR1_BENCH_MODEL:-/tmp/sqlr1-bench/qwen2.5-3b-q4_0.gguf}
[ -f "$model" ] || ./node_modules/.bin/sqlr1 make-model --shape qwen2.5-3b --type q4_0 --out "$model" > "$OUT/make-model.log" 2>&1
./node_modules/.bin/sqlr1 bench generate --model "$model" --device cuda --prompt-tokens 512 --new-tokens 256 --batch 1,8,32 \
  2> "$OUT/bench-installed.log" | tee "$OUT/bench-installed.txt" || { tail -20 "$OUT/bench-installed.log"; fail=1; }
[ $fail = 0 ] && echo "PASS: installed from tarballs offline, nothing compiled, bench ran on CUDA" || { echo FAIL; exit 1; }
