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

# With --packages, also what the installed-package check (scripts/gpu-packages.sh) needs there: the main and CPU
# tarballs (npm run prebuild first) and the npm CLI. The dependencies come from the node_modules packed above
# (that machine cannot reach the registry), so no npm cache is carried.
if [ "${1:-}" = --packages ]; then
  [ -f npm/linux-x64/lib/sqlr1.node ] || { echo "no CPU prebuild: run npm run prebuild first" >&2; exit 1; }
  rm -rf .gpu/packages
  node scripts/pack-all.mjs --cpu-only --out .gpu/packages > /dev/null
  npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  tar -cJf .gpu/npm-cli.tar.xz -C "$(dirname "$npm_dir")" --exclude='npm/docs' --exclude='npm/man' "$(basename "$npm_dir")"
  du -ch .gpu/* | tail -8
fi
