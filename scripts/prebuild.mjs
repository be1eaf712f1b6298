// Builds a prebuilt binary for a platform package (npm/<name>/lib/sqlr1.node) in its own build folder
// (prebuild/<variant>, git-ignored), so it never replaces the developer's bindings/<variant>/build.
//
//   node scripts/prebuild.mjs                       CPU, portable (no -march=native): npm/linux-x64
//   node scripts/prebuild.mjs --cuda [--arch LIST]  CUDA 13: npm/linux-x64-cuda13 (needs nvcc and cuBLAS)
//        [--time-limit S]                           stop the compile after S seconds; run the same command
//                                                   again to resume (the build folder keeps what was compiled)
//
// --arch takes compute capabilities (default 80,86,89,90: A100, RTX 30xx, RTX 40xx and L4, H100 and H200): machine
// code for each, plus PTX for the highest so that newer GPUs run the binary through the driver's JIT. The script writes
// npm/<name>/lib/build-info.json (glibc required, architectures, flags) and prints the glibc version the binary
// requires (from objdump -T), failing when it is newer than this machine's. For CUDA it also reports compile
// time per architecture (nvcc --time, CPU seconds summed over jobs) and device-code size per architecture
// (cuobjdump).
import { execFileSync, spawn } from 'node:child_process';
import { appendFileSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
const opt = (name, dflt) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : dflt);
const cuda = argv.includes('--cuda');
const variant = cuda ? 'cuda' : 'cpu';
const pkgDir = join(root, 'npm', cuda ? 'linux-x64-cuda13' : 'linux-x64');
const buildDir = join(root, 'prebuild', variant);
const log = (m) => process.stderr.write(`[sqlr1 prebuild] ${m}\n`);
const fail = (m) => { log(m); process.exit(1); };

/**
 * npm runs `prebuild:cuda` before `npm run build:cuda` as its pre-hook (and `prebuild` before `build`), in the
 * same environment as a direct `npm run prebuild:cuda`; only npm's own command line tells them apart.
 */
function runAsPreHook() {
  const event = process.env.npm_lifecycle_event;
  if (!event?.startsWith('prebuild')) return false;
  let pid = process.ppid;
  for (let depth = 0; depth < 4 && pid > 1; depth++) {
    try {
      // npm sets its process title to the command ("npm run build:cuda"), so the words may share one argument.
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split(/[\0\s]+/).filter(Boolean);
      const at = cmd.findIndex((a) => a === 'run' || a === 'run-script');
      if (at >= 0) return cmd.slice(at + 1).find((a) => !a.startsWith('-')) !== event;
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      pid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      return false;
    }
  }
  return false;
}
if (runAsPreHook()) process.exit(0);

if (process.platform !== 'linux' || process.arch !== 'x64') fail(`the platform packages are for linux-x64; this is ${process.platform}-${process.arch}`);

/** The --arch list as compute capabilities, checked, unique and ascending ("90,80" -> ["80", "90"]). */
function computeCapabilities(list) {
  const caps = [...new Set(String(list).split(/[,;\s]+/).filter(Boolean))];
  for (const c of caps) if (!/^\d{2,3}$/.test(c)) fail(`--arch takes compute capabilities such as 90,89,86,80; got ${JSON.stringify(c)}`);
  return caps.sort((a, b) => Number(a) - Number(b));
}

/** Compute capabilities to CMAKE_CUDA_ARCHITECTURES: SASS for each, PTX for the highest. */
const cudaArchitectures = (caps) => [...caps.map((c) => `${c}-real`), `${caps[caps.length - 1]}-virtual`].join(';');

/** Highest GLIBC_x.y symbol version the binary needs (objdump -T). */
function requiredGlibc(file) {
  const out = execFileSync('objdump', ['-T', file], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const versions = [...out.matchAll(/GLIBC_(\d+)\.(\d+)(?:\.(\d+))?/g)].map((m) => [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)]);
  versions.sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]);
  const top = versions[versions.length - 1];
  return top ? top.filter((x, i) => i < 2 || x > 0).join('.') : 'none';
}

const newer = (a, b) => {
  const [x, y] = [a, b].map((v) => v.split('.').map(Number));
  for (let i = 0; i < 3; i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) > (y[i] ?? 0);
  return false;
};

function neededLibraries(file) {
  const out = execFileSync('objdump', ['-p', file], { encoding: 'utf8', maxBuffer: 64 << 20 });
  return [...out.matchAll(/NEEDED\s+(\S+)/g)].map((m) => m[1]);
}

/** Device code per architecture in the binary, in bytes (cuobjdump extracts each cubin and PTX). */
function deviceCodeSizes(file) {
  const work = mkdtempSync(join(tmpdir(), 'sqlr1-cuobj-'));
  try {
    execFileSync('cuobjdump', ['-xelf', 'all', '-xptx', 'all', file], { cwd: work, stdio: 'ignore' });
  } catch (e) {
    rmSync(work, { recursive: true, force: true });
    return { error: `cuobjdump failed: ${e.message.split('\n')[0]}` };
  }
  const sizes = {};
  for (const f of readdirSync(work)) {
    const m = f.match(/\.(sm_\d+a?)\.cubin$/) ?? f.match(/\.(sm_\d+a?)\.ptx$/);
    const key = m ? (f.endsWith('.ptx') ? `ptx ${m[1].replace('sm_', 'compute_')}` : m[1]) : f.endsWith('.ptx') ? 'ptx' : 'other';
    sizes[key] = (sizes[key] ?? 0) + statSync(join(work, f)).size;
  }
  rmSync(work, { recursive: true, force: true });
  return sizes;
}

/**
 * nvcc --time rows summed per architecture: CPU seconds in cicc (per compute_XX) and ptxas (per sm_XX), for the
 * architectures built (CMake's compiler probe compiles once for its own default and is left out).
 */
function compileTimes(csv, built) {
  if (!existsSync(csv)) return {};
  const per = {};
  for (const line of readFileSync(csv, 'utf8').split('\n')) {
    const cols = line.split(',').map((c) => c.trim());
    // source file, phase, input files, output file, arch, tool, metric, unit
    if (cols.length < 8 || cols[7] !== 'ms') continue;
    const [, phase, , , arch, , metric] = cols;
    if (!/^(cicc|ptxas)$/.test(phase) || !/^(compute|sm)_\d+/.test(arch)) continue;
    const key = arch.replace(/^(compute|sm)_/, 'sm_');
    if (!built.has(key)) continue;
    per[key] = (per[key] ?? 0) + Number(metric) / 1000;
  }
  return Object.fromEntries(Object.entries(per).map(([k, v]) => [k, Math.round(v)]));
}

const buildArgs = [join(root, 'scripts', 'build-native.mjs'), '--out', buildDir];
// SQLR1_LLAMA_TOOLS=1 also configures llama.cpp's tools in the same tree (the GPU check builds its reference and
// batched bench there); they are separate targets and leave the addon as it is.
const env = { ...process.env, SQLR1_PORTABLE: '1', SQLR1_LLAMA_TOOLS: process.env.SQLR1_LLAMA_TOOLS === '1' ? '1' : '0' };
const stateFile = join(buildDir, 'sqlr1-prebuild-state.json');
let archs, caps;
const timeCsv = join(buildDir, 'nvcc-time.csv');
if (cuda) {
  caps = computeCapabilities(opt('--arch', process.env.SQLR1_CUDA_ARCH_LIST ?? '80,86,89,90'));
  archs = cudaArchitectures(caps);
  buildArgs.push('--cuda', `--CDCMAKE_CUDA_FLAGS=--time=${timeCsv}`);
  env.SQLR1_CUDA_ARCH = archs;
}
mkdirSync(buildDir, { recursive: true });
// A build resumed after --time-limit keeps the wall time spent so far; a changed architecture list starts over.
let state = existsSync(stateFile) ? JSON.parse(readFileSync(stateFile, 'utf8')) : {};
if (state.archs !== archs || typeof state.seconds !== 'number') {
  state = { archs, seconds: 0 };
  rmSync(timeCsv, { force: true });
}
const limit = Number(opt('--time-limit', '0'));
log(`building the ${variant} prebuild in ${buildDir}${cuda ? ` for CMAKE_CUDA_ARCHITECTURES=${archs}` : ' (portable: no -march=native)'}`);
const t0 = Date.now();
const child = spawn(process.execPath, buildArgs, { env, stdio: 'inherit', cwd: root, detached: true });
let timedOut = false;
const timer = limit > 0 ? setTimeout(() => { timedOut = true; process.kill(-child.pid, 'SIGTERM'); }, limit * 1000) : undefined;
const code = await new Promise((res) => child.on('exit', (c, sig) => res(c ?? (sig ? 1 : 0))));
clearTimeout(timer);
state.seconds += (Date.now() - t0) / 1000;
writeFileSync(stateFile, JSON.stringify(state));
if (timedOut) {
  log(`stopped after --time-limit ${limit} s (${state.seconds.toFixed(0)} s of build so far); run the same command again to resume`);
  process.exit(75);
}
if (code !== 0) fail(`the ${variant} build failed (exit ${code})`);

const built = join(buildDir, 'Release', 'sqlr1.node');
// Users install the C runtime, OpenMP and (for CUDA) the CUDA 13 runtime and cuBLAS; a binary that needs anything
// else (NCCL, say) would fail to load on their machines.
const allowed = [/^(libc|libm|libgcc_s|libstdc\+\+|libgomp|libdl|libpthread|librt)\.so\.\d+$/, /^ld-linux-x86-64\.so\.2$/,
  ...(cuda ? [/^(libcudart|libcublas|libcublasLt)\.so\.13$/, /^libcuda\.so\.1$/] : [])];
const unexpected = neededLibraries(built).filter((lib) => !allowed.some((re) => re.test(lib)));
if (unexpected.length > 0) fail(`the binary needs ${unexpected.join(', ')}, which the package does not ask users to install`);
const dest = join(pkgDir, 'lib', 'sqlr1.node');
mkdirSync(dirname(dest), { recursive: true });
copyFileSync(built, dest);
// Local symbols only matter to a debugger; the dynamic symbol table (napi_register_module_v1) stays.
execFileSync('strip', ['--strip-unneeded', dest]);

const glibc = requiredGlibc(dest);
const hostGlibc = process.report.getReport().header.glibcVersionRuntime;
const info = {
  package: JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')).name,
  version: JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version,
  commit: (() => { try { return execFileSync('git', ['rev-parse', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim(); } catch { return 'unknown'; } })(),
  glibc,
  buildMachineGlibc: hostGlibc,
  cpu: 'x86-64 with AVX2, BMI2, FMA and F16C (ggml with GGML_NATIVE=OFF)',
  needed: neededLibraries(dest),
  bytes: statSync(dest).size,
  buildSeconds: Math.round(state.seconds),
};
if (cuda) {
  info.cudaArchitectures = archs;
  info.deviceCodeBytes = deviceCodeSizes(dest);
  info.compileCpuSecondsPerArch = compileTimes(timeCsv, new Set(caps.map((c) => `sm_${c}`)));
}
writeFileSync(join(pkgDir, 'lib', 'build-info.json'), JSON.stringify(info, null, 2) + '\n');

console.log(JSON.stringify(info, null, 2));
rmSync(stateFile, { force: true });
appendFileSync(join(root, 'prebuild', 'prebuild.log'), JSON.stringify({ at: new Date().toISOString(), ...info }) + '\n');
if (glibc !== 'none' && hostGlibc && newer(glibc, hostGlibc)) fail(`the binary needs glibc ${glibc}, newer than this machine's ${hostGlibc}`);
log(`${dest}: ${(info.bytes / 1e6).toFixed(1)} MB, needs glibc >= ${glibc} (this machine: ${hostGlibc}), built in ${info.buildSeconds} s`);
