// Builds the native addon with cmake-js into bindings/<variant>/build/Release/sqlr1.node, where node-gyp-build
// finds it. Variants: cpu (ggml-base + ggml-cpu) and cuda (adds ggml-cuda; needs the CUDA toolkit with cuBLAS).
//
//   node scripts/build-native.mjs               CPU build
//   node scripts/build-native.mjs --cuda        CUDA build (or SQLR1_CUDA=1)
//   node scripts/build-native.mjs --if-missing  the install script: skip a variant that already has a local
//                                               binary, or whose prebuilt platform package is installed and loads
//   node scripts/build-native.mjs --out DIR     build folder (default bindings/<variant>/build); prebuilds use
//                                               their own folder so they never replace the developer's build
//   node scripts/build-native.mjs --CDNAME=V    extra CMake definitions, passed to cmake-js as they are
//
// Environment: SQLR1_CUDA_ARCH (CMAKE_CUDA_ARCHITECTURES; default "native" when a GPU is visible, else 90),
// SQLR1_JOBS (parallel jobs), SQLR1_PORTABLE=1 (no -march=native; for prebuilt binaries), SQLR1_SKIP_NATIVE=1
// (skip entirely), SQLR1_LLAMA_TOOLS=1 (also configure llama.cpp's tools over the same ggml, for `npm run bench`),
// SQLR1_BUILD_FROM_SOURCE=1 or `npm rebuild sqlr1-native --build-from-source` (build even when a platform
// package is installed).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fetchGgml } from './fetch-ggml.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
const args = new Set(argv);
const cuda = args.has('--cuda') || process.env.SQLR1_CUDA === '1';
const variant = cuda ? 'cuda' : 'cpu';
const outIdx = argv.indexOf('--out');
const outDir = outIdx >= 0 ? resolve(argv[outIdx + 1]) : join(root, 'bindings', variant, 'build');
const extraDefs = argv.filter((a) => a.startsWith('--CD'));
const fromSource = args.has('--build-from-source') || process.env.SQLR1_BUILD_FROM_SOURCE === '1' ||
  process.env.npm_config_build_from_source === 'true';
const log = (m) => process.stderr.write(`[sqlr1 build] ${m}\n`);
// The prebuilt platform packages (npm/*), installed as optionalDependencies where os, cpu and libc match.
const platformPackage = { cpu: '@sqlr1-native/linux-x64', cuda: '@sqlr1-native/linux-x64-cuda13' };

function hasBinary(v) {
  const dir = join(root, 'bindings', v);
  if (existsSync(join(dir, 'build', 'Release', 'sqlr1.node'))) return true;
  const pre = join(dir, 'prebuilds', `${process.platform}-${process.arch}`);
  return existsSync(pre) && readdirSync(pre).some((f) => f.endsWith('.node'));
}

/** Why the variant's platform package can stand in for a build, or undefined when it cannot. */
function usablePlatformPackage(v) {
  let file;
  try {
    file = createRequire(join(root, 'package.json')).resolve(`${platformPackage[v]}/sqlr1.node`);
  } catch {
    return undefined;
  }
  if (v === 'cuda') return `${platformPackage[v]} is installed (its CUDA libraries are checked when it loads)`;
  // The CPU binary is loaded here once, so that an install on an unsupported system (too old a glibc, say)
  // builds from source instead.
  try {
    createRequire(import.meta.url)(file);
    return `${platformPackage[v]} is installed and loads`;
  } catch (e) {
    log(`${platformPackage[v]} is installed but does not load here (${String(e?.message ?? e).split('\n')[0]}); building from source`);
    return undefined;
  }
}

function findCublas() {
  const dirs = [];
  for (const base of [process.env.CUDA_HOME, process.env.CUDA_PATH, '/usr/local/cuda']) {
    if (base) dirs.push(join(base, 'lib64'), join(base, 'targets', 'x86_64-linux', 'lib'), join(base, 'lib'));
  }
  try {
    const nvcc = execFileSync('which', ['nvcc'], { encoding: 'utf8' }).trim();
    const real = execFileSync('readlink', ['-f', nvcc], { encoding: 'utf8' }).trim();
    dirs.push(join(dirname(dirname(real)), 'lib64'), join(dirname(dirname(real)), 'targets', 'x86_64-linux', 'lib'));
  } catch { /* no nvcc on PATH */ }
  dirs.push('/usr/lib/x86_64-linux-gnu');
  return dirs.find((d) => existsSync(d) && readdirSync(d).some((f) => /^libcublas\.so/.test(f)));
}

if (process.env.SQLR1_SKIP_NATIVE === '1') {
  log('SQLR1_SKIP_NATIVE=1: skipping the native build');
  process.exit(0);
}
if (args.has('--if-missing') && !fromSource) {
  if (hasBinary(variant)) {
    log(`${variant} binary present; nothing to build`);
    process.exit(0);
  }
  const why = usablePlatformPackage(variant);
  if (why) {
    log(`${why}; nothing to build (set SQLR1_BUILD_FROM_SOURCE=1 to compile instead)`);
    process.exit(0);
  }
}
if (cuda) {
  if (spawnSync('nvcc', ['--version']).status !== 0) {
    log('CUDA build requested but nvcc was not found: install the CUDA toolkit (with cuBLAS) and put nvcc on PATH.');
    process.exit(1);
  }
  if (!findCublas()) {
    log('CUDA build requested but cuBLAS (libcublas.so) was not found in the CUDA toolkit: ggml-cuda needs it. ' +
      'Install the toolkit\'s cuBLAS package, or set CUDA_HOME to a toolkit that has it.');
    process.exit(1);
  }
}

fetchGgml();
const jobs = Number(process.env.SQLR1_JOBS) || cpus().length;
const gpuVisible = spawnSync('nvidia-smi', ['-L']).status === 0;
const cmakeArgs = [
  // Resolved, not joined: in an installed package cmake-js sits in the project's node_modules.
  join(dirname(createRequire(join(root, 'package.json')).resolve('cmake-js/package.json')), 'bin', 'cmake-js'), 'build',
  '--directory', root,
  '--out', outDir,
  '--parallel', String(jobs),
  '--CDSQLR1_CUDA=' + (cuda ? 'ON' : 'OFF'),
  '--CDGGML_NATIVE=' + (process.env.SQLR1_PORTABLE === '1' ? 'OFF' : 'ON'),
];
if (process.env.SQLR1_LLAMA_TOOLS === '1') cmakeArgs.push('--CDSQLR1_LLAMA_TOOLS=ON');
cmakeArgs.push(...extraDefs);
if (cuda) cmakeArgs.push('--CDCMAKE_CUDA_ARCHITECTURES=' + (process.env.SQLR1_CUDA_ARCH || (gpuVisible ? 'native' : '90')));
log(`building the ${variant} addon with ${jobs} jobs (this compiles ggml; a few minutes on first build)`);
const t0 = Date.now();
const res = spawnSync(process.execPath, cmakeArgs, { stdio: 'inherit', cwd: root });
if (res.status !== 0) {
  log(`the ${variant} build failed (exit ${res.status}); see the compiler output above`);
  process.exit(res.status ?? 1);
}
log(`built ${join(outDir, 'Release', 'sqlr1.node')} in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
