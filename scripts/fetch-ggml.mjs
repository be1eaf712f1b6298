// Fetches llama.cpp's source (which carries ggml) from the npm registry: the package node-llama-cpp ships it as
// a git bundle. Only the tarball is downloaded (no dependencies, no prebuilt binaries), its integrity is checked
// against the pin below, and the bundle is cloned into native/.deps/llama.cpp (git-ignored).
//
// To bump: change NLC_VERSION, set NLC_INTEGRITY to `npm view node-llama-cpp@<v> dist.integrity`, rebuild, and
// run the full test suite (CPU here, CUDA on a GPU machine).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const NLC_VERSION = '3.21.1';
export const NLC_INTEGRITY =
  'sha512-E3N0Ev2Va0wzydvXYFwM9Hvyo07PoWjt8T/9GMc43Cvt8YkV/NU/tYUgEMC1grTPv2o9PRjQi0G3Wb5P/awiMg==';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const depsDir = join(root, 'native', '.deps');
export const llamaDir = join(depsDir, 'llama.cpp');
const stampFile = join(llamaDir, '.sqlr1-pin');

function log(msg) {
  process.stderr.write(`[sqlr1 fetch-ggml] ${msg}\n`);
}

export function fetchGgml() {
  if (existsSync(stampFile) && readFileSync(stampFile, 'utf8').trim() === NLC_VERSION) return llamaDir;
  mkdirSync(depsDir, { recursive: true });
  rmSync(llamaDir, { recursive: true, force: true });
  log(`downloading node-llama-cpp@${NLC_VERSION} from the npm registry (tarball only)`);
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  const out = execFileSync(
    npm,
    ['pack', `node-llama-cpp@${NLC_VERSION}`, '--pack-destination', depsDir, '--json', '--ignore-scripts'],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const tgz = join(depsDir, JSON.parse(out)[0].filename);
  const digest = 'sha512-' + createHash('sha512').update(readFileSync(tgz)).digest('base64');
  if (digest !== NLC_INTEGRITY) {
    rmSync(tgz, { force: true });
    throw new Error(`node-llama-cpp@${NLC_VERSION} integrity mismatch: expected ${NLC_INTEGRITY}, got ${digest}`);
  }
  const unpack = join(depsDir, 'unpack');
  rmSync(unpack, { recursive: true, force: true });
  mkdirSync(unpack);
  execFileSync('tar', ['xzf', tgz, '-C', unpack, 'package/llama/gitRelease.bundle'], { stdio: 'inherit' });
  log('cloning the llama.cpp bundle');
  execFileSync('git', ['clone', '-q', '-c', 'advice.detachedHead=false',
    join(unpack, 'package', 'llama', 'gitRelease.bundle'), llamaDir], { stdio: 'inherit' });
  rmSync(unpack, { recursive: true, force: true });
  rmSync(tgz, { force: true });
  writeFileSync(stampFile, NLC_VERSION + '\n');
  return llamaDir;
}

/** Path of the real Qwen2 vocabulary GGUF shipped in the bundle. */
export function vocabPath() {
  return join(llamaDir, 'models', 'ggml-vocab-qwen2.gguf');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  fetchGgml();
  log(`ready: ${llamaDir} (${readdirSync(llamaDir).length} entries)`);
}
