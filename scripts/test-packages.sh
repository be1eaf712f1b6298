#!/usr/bin/env bash
# The published packages as a user gets them: packs the CPU tarballs (sqlr1-native and @sqlr1-native/linux-x64;
# `npm run prebuild` first when npm/linux-x64 has no binary), installs them into a fresh temporary project with
# `npm install ./*.tgz` while a `cmake` that fails loudly is first on PATH, then runs `npx sqlr1 demo` and a
# plain Node script that imports the library. Fails when any of our packages compiled anything. Prints the
# install time, better-sqlite3's own compile (its prebuilt binaries sit on a host CI cannot reach) apart, and
# each package's packed and unpacked size.
#
#   bash scripts/test-packages.sh            (npm run test:packages)
# Environment: SQLR1_PKG_DIR (keep the temporary folder there instead of a fresh mktemp one, emptied first),
# SQLR1_PKG_COMPILE_SQLITE=1 (better-sqlite3 compiles itself instead of taking this repository's build).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=${SQLR1_PKG_DIR:-$(mktemp -d /tmp/sqlr1-packages.XXXXXX)}
rm -rf "$work" && mkdir -p "$work"/{tarballs,app,fakebin,logs}
say() { echo "[test-packages] $*"; }

if [ ! -f npm/linux-x64/lib/sqlr1.node ]; then
  say "no CPU prebuild in npm/linux-x64/lib: building it (npm run prebuild)"
  nice -n 10 node scripts/prebuild.mjs
fi
node scripts/pack-all.mjs --cpu-only --out "$work/tarballs" > "$work/packed.json"

# Any compile of ours goes through cmake (scripts/build-native.mjs -> cmake-js): make it fail loudly.
cat > "$work/fakebin/cmake" <<EOF
#!/bin/sh
echo "cmake \$* (called during the install)" >> "$work/cmake-called"
echo "test-packages: cmake was called: an installed package tried to compile" >&2
exit 97
EOF
chmod +x "$work/fakebin/cmake"

cd "$work/app"
cat > package.json <<'EOF'
{ "name": "sqlr1-install-check", "version": "1.0.0", "private": true, "type": "module" }
EOF
cp "$work"/tarballs/*.tgz .
# better-sqlite3 downloads its prebuilt binary from GitHub, which CI cannot reach, and then compiles itself for
# minutes. Where this repository's node_modules holds a built copy of the same version, it is offered as that
# download would give it (prebuild-install's local prebuilds), so the install takes what a user's takes;
# SQLR1_PKG_COMPILE_SQLITE=1 lets it compile instead, to time that compile.
bsq="$root/node_modules/better-sqlite3"
if [ "${SQLR1_PKG_COMPILE_SQLITE:-0}" != 1 ] && [ -f "$bsq/build/Release/better_sqlite3.node" ]; then
  v=$(node -p "require('$bsq/package.json').version"); abi=$(node -p process.versions.modules)
  mkdir -p "$work/prebuilds/stage/build/Release"
  cp "$bsq/build/Release/better_sqlite3.node" "$work/prebuilds/stage/build/Release/"
  tar -czf "$work/prebuilds/better-sqlite3-v$v-node-v$abi-linux-x64.tar.gz" -C "$work/prebuilds/stage" build
  export npm_config_better_sqlite3_local_prebuilds="$work/prebuilds"
  say "better-sqlite3 $v: its binary comes from this repository's build, as a local prebuild"
fi
say "npm install $(ls *.tgz | tr '\n' ' ')"
t0=$(date +%s.%N)
PATH="$work/fakebin:$PATH" npm install ./*.tgz --no-audit --no-fund --timing --logs-dir "$work/logs" > "$work/install.log" 2>&1 \
  || { cat "$work/install.log"; say "FAIL: npm install failed"; exit 1; }
t1=$(date +%s.%N)

fail=0
if [ -f "$work/cmake-called" ]; then say "FAIL: cmake was called during the install:"; cat "$work/cmake-called"; fail=1; fi
for d in node_modules/sqlr1-native/bindings/cpu/build node_modules/sqlr1-native/bindings/cuda/build; do
  if [ -e "$d" ]; then say "FAIL: $d exists: the install built the addon"; fail=1; fi
done
[ -f node_modules/@sqlr1-native/linux-x64/lib/sqlr1.node ] || { say "FAIL: @sqlr1-native/linux-x64 was not installed"; fail=1; }
[ -f node_modules/sqlr1-native/assets/ggml-vocab-qwen2.gguf ] || { say "FAIL: the Qwen2 vocabulary is not in the package"; fail=1; }

# Here the demo checks the installed package end to end. Its learning verdict (exit 3) belongs to the repository's
# own `npm run demo` step: the portable binary rounds differently from a native build, and the demo's margin is two
# questions of twelve, so a 3 here is reported, not failed.
set +e
PATH="$work/fakebin:$PATH" npx --no-install sqlr1 demo > "$work/demo.log" 2>&1
demo_rc=$?
set -e
case $demo_rc in
  0) ;;
  3) say "note: the demo ran from the installed package; with the portable binary GRPO did not raise accuracy (exit 3)" ;;
  *) cat "$work/demo.log"; say "FAIL: npx sqlr1 demo (exit $demo_rc)"; fail=1 ;;
esac
tail -5 "$work/demo.log"

# The import a user writes. GrpoTrainer is checked once the source tree exports it.
if grep -q 'GrpoTrainer' "$root/lib/index.ts"; then
  cat > check.mjs <<'EOF'
import { GrpoTrainer, loadModel } from 'sqlr1-native';
for (const [name, f] of Object.entries({ GrpoTrainer, loadModel })) {
  if (typeof f !== 'function') throw new Error(`${name} is ${typeof f}, expected a function`);
}
console.log('import { GrpoTrainer, loadModel } from sqlr1-native: both are functions');
EOF
else
  cat > check.mjs <<'EOF'
import { loadModel } from 'sqlr1-native';
if (typeof loadModel !== 'function') throw new Error(`loadModel is ${typeof loadModel}, expected a function`);
console.log('import { loadModel } from sqlr1-native: a function (GrpoTrainer is not exported by this source tree yet)');
EOF
fi
node check.mjs || { say "FAIL: node check.mjs"; fail=1; }

# Times from npm's own timers: scripts of a package run after its dependencies', so better-sqlite3's compile
# can be taken out of the total.
node - "$work" "$t0" "$t1" <<'EOF'
const fs = require('fs'), path = require('path');
const [work, t0, t1] = process.argv.slice(2);
const logs = path.join(work, 'logs');
const timing = JSON.parse(fs.readFileSync(path.join(logs, fs.readdirSync(logs).find((f) => f.endsWith('-timing.json'))), 'utf8')).timers;
const s = (ms) => (ms / 1000).toFixed(1) + ' s';
const total = (Number(t1) - Number(t0)) * 1000;
const bsq = timing['build:run:install:node_modules/better-sqlite3'] ?? 0;
const ours = Object.entries(timing).filter(([k]) => /^build:run:(pre|post)?install:node_modules\/(sqlr1-native|@sqlr1-native\/)/.test(k));
console.log(`[test-packages] npm install ./*.tgz: ${s(total)} in all; better-sqlite3's own compile ${s(bsq)}; ` +
  `everything else (our packages and the other dependencies, fetch and unpack) ${s(total - bsq)}`);
for (const [k, v] of ours) console.log(`[test-packages]   ${k.replace('build:run:', '')} script: ${s(v)}`);
const unpack = Object.entries(timing).filter(([k]) => /^reifyNode:node_modules\/(sqlr1-native|@sqlr1-native\/[^/]+)$/.test(k));
console.log(`[test-packages]   resolving the dependency tree ${s(timing.idealTree ?? 0)}, unpacking all packages ${s(timing['reify:unpack'] ?? 0)} ` +
  `(in parallel; ours: ${unpack.map(([k, v]) => `${k.replace('reifyNode:node_modules/', '')} ${s(v)}`).join(', ')})`);
for (const p of JSON.parse(fs.readFileSync(path.join(work, 'packed.json'), 'utf8'))) {
  console.log(`[test-packages] ${p.name}: ${(p.packedBytes / 1e6).toFixed(2)} MB packed, ${(p.unpackedBytes / 1e6).toFixed(2)} MB unpacked`);
}
if (total - bsq > 20000) console.log('[test-packages] note: the install without better-sqlite3 took over the 20 s target');
EOF
for f in node_modules/@sqlr1-native/*/lib/sqlr1.node; do
  say "$f needs glibc >= $(objdump -T "$f" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 | cut -d_ -f2)"
done
[ "$fail" = 0 ] && say "PASS (folder: $work)" || { say "FAIL (folder: $work)"; exit 1; }
