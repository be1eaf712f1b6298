// Builds test/reference's llama-reference program: llama.cpp's forward over the fetched llama.cpp/ggml source
// (the same source and ggml options as the addon), which test/reference/llama-forward.test.ts compares the
// project's logits with. Only libllama, ggml and the program are compiled, into a git-ignored folder.
//
//   node scripts/build-reference.mjs            CPU build   -> test/reference/build/llama-reference
//   node scripts/build-reference.mjs --cuda     CUDA build  -> test/reference/build-cuda/llama-reference
//   node scripts/build-reference.mjs --if-missing   do nothing when the binary exists
//
// Environment: SQLR1_JOBS (parallel jobs, default: all cores), SQLR1_CUDA_ARCH (default "native" when a GPU is
// visible, else 90), SQLR1_PORTABLE=1 (no -march=native).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fetchGgml } from './fetch-ggml.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = new Set(process.argv.slice(2));
const cuda = args.has('--cuda');
const src = join(root, 'test', 'reference');
const out = join(src, cuda ? 'build-cuda' : 'build');
const binary = join(out, 'llama-reference');
const log = (m) => process.stderr.write(`[sqlr1 build-reference] ${m}\n`);

if (args.has('--if-missing') && existsSync(binary)) {
  log(`${binary} present; nothing to build`);
  process.exit(0);
}
if (cuda && spawnSync('nvcc', ['--version']).status !== 0) {
  log('CUDA build requested but nvcc was not found: install the CUDA toolkit (with cuBLAS) and put nvcc on PATH.');
  process.exit(1);
}
fetchGgml();
const jobs = Number(process.env.SQLR1_JOBS) || cpus().length;
const configure = [
  '-S', src, '-B', out, '-DCMAKE_BUILD_TYPE=Release',
  `-DGGML_NATIVE=${process.env.SQLR1_PORTABLE === '1' ? 'OFF' : 'ON'}`,
  `-DSQLR1_REFERENCE_CUDA=${cuda ? 'ON' : 'OFF'}`,
];
if (cuda) {
  const gpuVisible = spawnSync('nvidia-smi', ['-L']).status === 0;
  configure.push(`-DCMAKE_CUDA_ARCHITECTURES=${process.env.SQLR1_CUDA_ARCH || (gpuVisible ? 'native' : '90')}`);
}
const t0 = Date.now();
const run = (argv) => {
  const r = spawnSync('cmake', argv, { stdio: ['ignore', 2, 2], cwd: root });
  if (r.status !== 0) {
    log(`cmake ${argv.slice(0, 2).join(' ')} failed (exit ${r.status ?? r.signal}); see the output above`);
    process.exit(r.status ?? 1);
  }
};
log(`building llama-reference (${cuda ? 'CUDA' : 'CPU'}) with ${jobs} jobs: libllama and ggml compile once, several minutes`);
run(configure);
run(['--build', out, '--target', 'llama-reference', '--parallel', String(jobs)]);
log(`built ${binary} in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
