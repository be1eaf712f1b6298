#!/usr/bin/env bash
# Packs what a bare GPU machine without network needs into .gpu/ (git-ignored): this machine's Node binary,
# node_modules without what tests never load, and the fetched ggml source without its git history.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
[ -f .gpu/node.xz ] || xz -T2 -c "$(command -v node)" > .gpu/node.xz
tar -cJf .gpu/node_modules.tar.xz --exclude='node_modules/@typescript/native-preview*' \
  --exclude='node_modules/better-sqlite3/deps' --exclude='node_modules/better-sqlite3/src' \
  --exclude='node_modules/better-sqlite3/build/Release/obj*' --exclude='node_modules/better-sqlite3/build/Release/.deps' \
  --exclude='*.map' --exclude='*.md' node_modules
# The Qwen2 and llama-bpe vocabularies and their tokenizer test vectors stay; other models, history, docs and the UI go.
tar -cf /tmp/sqlr1-llama.tar -C native/.deps --exclude='llama.cpp/.git' --exclude='llama.cpp/models' \
  --exclude='llama.cpp/docs' --exclude='llama.cpp/tools/ui' --exclude='llama.cpp/examples' --exclude='llama.cpp/media' \
  --exclude='llama.cpp/tests' llama.cpp
tar -rf /tmp/sqlr1-llama.tar -C native/.deps $(cd native/.deps && ls llama.cpp/models/ggml-vocab-qwen2.gguf* llama.cpp/models/ggml-vocab-llama-bpe.gguf*)
xz -T2 -c /tmp/sqlr1-llama.tar > .gpu/llama.tar.xz && rm -f /tmp/sqlr1-llama.tar
[ "${1:-}" = --packages ] || du -ch .gpu/* | tail -5

# With --packages, also what the installed-package check (scripts/gpu-packages.sh) needs, since that machine has
# no registry: the main and CPU tarballs (npm run prebuild first), an npm cache holding every dependency they
# pull (filled by an install here, scripts skipped), the npm CLI itself, and this machine's better-sqlite3 binary
# (same Node as .gpu/node.xz; its own build needs Node's headers and a compiler, and it is not ours).
if [ "${1:-}" = --packages ]; then
  [ -f npm/linux-x64/lib/sqlr1.node ] || { echo "no CPU prebuild: run npm run prebuild first" >&2; exit 1; }
  rm -rf .gpu/packages /tmp/sqlr1-gpu-cache /tmp/sqlr1-gpu-fill
  node scripts/pack-all.mjs --cpu-only --out .gpu/packages > /dev/null
  mkdir -p /tmp/sqlr1-gpu-fill && cp .gpu/packages/*.tgz /tmp/sqlr1-gpu-fill/
  (cd /tmp/sqlr1-gpu-fill && echo '{"name":"fill","version":"1.0.0","private":true}' > package.json &&
    npm install ./*.tgz --ignore-scripts --no-audit --no-fund --cache /tmp/sqlr1-gpu-cache > /dev/null)
  tar -cf .gpu/npm-cache.tar -C /tmp sqlr1-gpu-cache
  npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  tar -cJf .gpu/npm-cli.tar.xz -C "$(dirname "$npm_dir")" --exclude='npm/docs' --exclude='npm/man' "$(basename "$npm_dir")"
  cp node_modules/better-sqlite3/build/Release/better_sqlite3.node .gpu/better_sqlite3.node
  rm -rf /tmp/sqlr1-gpu-cache /tmp/sqlr1-gpu-fill
  du -ch .gpu/* .gpu/packages/* | sort -h | tail -12
fi
