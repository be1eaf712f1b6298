# Sourced by the GPU scripts. On a CUDA machine with Node and network this does nothing; on a bare machine it
# unpacks what was carried in .gpu/ (a Node binary, node_modules, the ggml source), since nothing can be
# fetched there. scripts/pack-gpu.sh makes those files.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if ! command -v node >/dev/null 2>&1 && [ -f .gpu/node.xz ]; then
  xz -dc .gpu/node.xz > /tmp/node && chmod +x /tmp/node
  mkdir -p /tmp/nodebin && ln -sf /tmp/node /tmp/nodebin/node && export PATH=/tmp/nodebin:$PATH
fi
if [ ! -d node_modules ] && [ -f .gpu/node_modules.tar.xz ]; then
  tar -xJf .gpu/node_modules.tar.xz
fi
if [ ! -f native/.deps/llama.cpp/.sqlr1-pin ] && [ -f .gpu/llama.tar.xz ]; then
  mkdir -p native/.deps && tar -xJf .gpu/llama.tar.xz -C native/.deps
fi
export OUT=${OUT:-$root/gpu-out}
mkdir -p "$OUT"
# node_modules/.bin entries are links that may not survive packing; call the tools through node.
tap() { node node_modules/tap/dist/esm/run.mjs "$@"; }
tsc() { node node_modules/typescript/bin/tsc "$@"; }
