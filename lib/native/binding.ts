/**
 * Finds and loads the native addon. For each variant (CUDA, then CPU) two places are tried, in the order sharp
 * and node-llama-cpp use: a local build (bindings/<variant>/build/Release or bindings/<variant>/prebuilds, found
 * through node-gyp-build; made by `npm run build:native`, `npm run build:cuda` or
 * `npm rebuild sqlr1-native --build-from-source`), then the prebuilt platform package that npm installs as an
 * optional dependency (@sqlr1-native/linux-x64, @sqlr1-native/linux-x64-cuda13). A CUDA binary is first loaded
 * in a child process, so that a broken driver or a missing CUDA library cannot take down the caller's process.
 * Every failed attempt is kept, and when nothing loads they are reported together with what to do.
 */
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sqlr1Error, type ErrorCode } from '../errors.js';
import type { NativeBinding } from './types.js';

export type DeviceRequest = 'auto' | 'cpu' | 'cuda';
export type Device = 'cpu' | 'cuda';

const require = createRequire(import.meta.url);
const nodeGypBuild = require('node-gyp-build') as { path(dir: string): string };

/** The package root (the folder with package.json), from lib/native or dist/native. */
export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The prebuilt platform packages, one per variant (npm/<folder> in the repository). */
export const platformPackages: Record<Device, string> = {
  cpu: '@sqlr1-native/linux-x64',
  cuda: '@sqlr1-native/linux-x64-cuda13',
};

/** One place a binary was looked for, and why it could not be used. */
export interface LoadAttempt {
  device: Device;
  /** 'local build' or the platform package's name. */
  source: string;
  /** The .node file, or the folder searched when there was none. */
  path: string;
  reason: string;
}

/** Where the loader looks; tests replace these. */
export interface LoaderEnv {
  /** The .node file of a local build of the variant, or throws (node-gyp-build's search by default). */
  localBinary(device: Device): string;
  /** The .node file of an installed platform package, or undefined when it is not installed. */
  packageBinary(name: string): string | undefined;
  /** CPU feature flags (/proc/cpuinfo), to check the portable CPU binary's AVX2 baseline before loading it. */
  cpuFlags(): Set<string> | undefined;
  /** True when CUDA is switched off (SQLR1_NO_CUDA=1). */
  cudaDisabled(): boolean;
  /** Loads a .node file in this process. */
  loadInProcess(file: string): NativeBinding;
  /**
   * Loads a CUDA .node file in a child process and counts its devices, or says why it could not; `gpu` is the
   * first device (the one used) and `architectures` what the binary carries, where the binary reports them.
   */
  probeInChild(file: string): CudaProbe;
}

export type CudaProbe =
  | { ok: true; devices: number; gpu?: { name: string; computeCapability: string }; architectures?: string }
  | { ok: false; reason: string };

const probes = new Map<string, CudaProbe>();
export const defaultLoaderEnv: LoaderEnv = {
  localBinary: (device) => nodeGypBuild.path(join(packageRoot, 'bindings', device)),
  packageBinary: (name) => {
    try {
      return require.resolve(`${name}/sqlr1.node`);
    } catch {
      return undefined;
    }
  },
  cpuFlags: () => {
    if (process.platform !== 'linux') return undefined;
    try {
      const line = readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('flags'));
      return line ? new Set(line.split(':')[1]!.trim().split(/\s+/)) : undefined;
    } catch {
      return undefined;
    }
  },
  cudaDisabled: () => process.env.SQLR1_NO_CUDA === '1',
  loadInProcess: (file) => require(file) as NativeBinding,
  probeInChild: (file) => {
    const hit = probes.get(file);
    if (hit) return hit;
    const script = `try { const b = require(${JSON.stringify(file)}); const d = b.cudaDevices();` +
      ` process.stdout.write(JSON.stringify({ devices: d.length, gpu: d[0], architectures: b.buildInfo().cudaArchitectures })); }` +
      ` catch (e) { process.stderr.write(String(e && e.message || e)); process.exit(3); }`;
    const r = spawnSync(process.execPath, ['-e', script], { cwd: packageRoot, encoding: 'utf8', timeout: 60_000 });
    const why = r.error?.message ?? (r.stderr.trim() || `exit ${r.status ?? r.signal}`);
    let result: CudaProbe = { ok: false, reason: why.split('\n')[0]! };
    if (r.status === 0) {
      try {
        const out = JSON.parse(r.stdout) as { devices: number; gpu?: { name: string; computeCapability?: string }; architectures?: string };
        result = {
          ok: true, devices: out.devices,
          ...(out.gpu?.computeCapability ? { gpu: { name: out.gpu.name, computeCapability: out.gpu.computeCapability } } : {}),
          ...(out.architectures ? { architectures: out.architectures } : {}),
        };
      } catch {
        result = { ok: false, reason: `unexpected probe output: ${r.stdout.slice(0, 200)}` };
      }
    }
    probes.set(file, result);
    return result;
  },
};

/** The exports the library calls; a binary without one of them predates this package (a stale local build). */
const REQUIRED_EXPORTS: readonly (keyof NativeBinding)[] = [
  'Model', 'Context', 'LoraAdapter', 'ParamStore', 'createLora', 'loadLora', 'loadModel', 'makeModel', 'buildInfo',
  'cudaDevices', 'runGraph', 'createTrainer', 'broadcastShape', 'adamwCheck',
];

/** The CPU features the portable CPU binary (ggml with GGML_NATIVE=OFF) uses without checking. */
const PORTABLE_CPU_FLAGS = ['avx2', 'bmi2', 'fma', 'f16c'];

/**
 * What to install for a CUDA library that the dynamic loader could not find, from its error message
 * ("libcublas.so.13: cannot open shared object file"), or undefined when the message names none.
 */
export function missingCudaLibraryHint(message: string): string | undefined {
  const lib = /(lib[\w+.-]+?\.so(?:\.\d+)*): cannot open shared object file/.exec(message)?.[1];
  if (!lib) return undefined;
  if (/^libcuda\.so/.test(lib)) {
    return `${lib} (the NVIDIA driver) is missing: install an NVIDIA driver that supports CUDA 13 (580 or newer)`;
  }
  const pkg = /^libcublas/.test(lib) ? 'libcublas-13-0' : /^libcudart/.test(lib) ? 'cuda-cudart-13-0' : undefined;
  const what = pkg === 'libcublas-13-0' ? 'cuBLAS 13' : pkg === 'cuda-cudart-13-0' ? 'the CUDA 13 runtime' : 'a CUDA 13 library';
  return `${lib} (${what}) is missing: install ${pkg ? `\`${pkg}\` from NVIDIA's CUDA repository (or ` : '('}the CUDA Toolkit 13) ` +
    'and put its lib64 folder on the library path (ldconfig, or LD_LIBRARY_PATH=/usr/local/cuda-13/lib64)';
}

/**
 * What to do when a prebuilt binary does not load because of the system's C and C++ runtimes (too old a glibc or
 * libstdc++, or no OpenMP runtime), or undefined when the message is about something else.
 */
export function systemLibraryHint(message: string): string | undefined {
  const version = /version `((GLIBC|GLIBCXX|CXXABI)_[\d.]+)' not found/.exec(message);
  if (version) {
    const lib = version[2] === 'GLIBC' ? 'glibc' : 'libstdc++';
    return `this system's ${lib} is older than the prebuilt binary needs (${version[1]}): build from source instead`;
  }
  if (/libgomp\.so\.1: cannot open shared object file/.test(message)) {
    return 'libgomp.so.1 (the GNU OpenMP runtime) is missing: install libgomp1 (apt) or libgomp (dnf)';
  }
  return undefined;
}

/**
 * Whether a GPU of compute capability `cc` ("8.6") runs a binary built for `architectures` (CMake's list, joined
 * with commas: "80-real,90-real,90-virtual"; a bare number is both): machine code for X.Y runs on X.Z with Z >= Y,
 * PTX for X.Y on anything >= X.Y (compiled by the driver at load). Undefined when either is in another form
 * ("all", "native"), so that the caller does not guess.
 */
export function cudaArchitecturesRun(architectures: string, cc: string): boolean | undefined {
  const dev = /^(\d+)\.(\d+)$/.exec(cc);
  if (!dev) return undefined;
  const [major, minor] = [Number(dev[1]), Number(dev[2])];
  let known = false;
  for (const item of architectures.split(',').map((a) => a.trim()).filter(Boolean)) {
    const m = /^(\d+)(\d)(?:-(real|virtual))?$/.exec(item);
    if (!m) return undefined;
    known = true;
    const [amaj, amin] = [Number(m[1]), Number(m[2])];
    const sass = m[3] !== 'virtual', ptx = m[3] !== 'real';
    if (sass && amaj === major && amin <= minor) return true;
    if (ptx && (amaj < major || (amaj === major && amin <= minor))) return true;
  }
  return known ? false : undefined;
}

/** Tries the variant's local build, then its platform package; CUDA binaries are probed in a child first. */
function tryVariant(device: Device, env: LoaderEnv, attempts: LoadAttempt[]): NativeBinding | undefined {
  const local = relative(process.cwd(), join(packageRoot, 'bindings', device)) || '.';
  const sources: Array<{ source: string; where: string; file: () => string | undefined }> = [
    { source: 'local build', where: local, file: () => { try { return env.localBinary(device); } catch { return undefined; } } },
    { source: platformPackages[device], where: `node_modules/${platformPackages[device]}`, file: () => env.packageBinary(platformPackages[device]) },
  ];
  for (const s of sources) {
    const file = s.file();
    if (!file) {
      attempts.push({ device, source: s.source, path: s.where, reason: s.source === 'local build' ? 'not built' : 'not installed' });
      continue;
    }
    const fail = (reason: string) => attempts.push({ device, source: s.source, path: file, reason });
    if (device === 'cpu' && s.source !== 'local build') {
      const flags = env.cpuFlags();
      const lacking = flags ? PORTABLE_CPU_FLAGS.filter((f) => !flags.has(f)) : [];
      if (lacking.length > 0) {
        fail(`this CPU lacks ${lacking.join(', ')}, which the prebuilt binary needs`);
        continue;
      }
    }
    if (device === 'cuda') {
      const probe = env.probeInChild(file);
      if (!probe.ok) {
        fail(missingCudaLibraryHint(probe.reason) ?? systemLibraryHint(probe.reason) ?? `failed to load: ${probe.reason}`);
        continue;
      }
      if (probe.devices === 0) {
        fail('loads, but no CUDA device is visible');
        continue;
      }
      if (probe.gpu && probe.architectures && cudaArchitecturesRun(probe.architectures, probe.gpu.computeCapability) === false) {
        fail(`carries code for ${probe.architectures}, which the ${probe.gpu.name} (compute capability ${probe.gpu.computeCapability}) ` +
          'cannot run: build the CUDA variant from source for it (SQLR1_CUDA=1 SQLR1_BUILD_FROM_SOURCE=1 npm rebuild sqlr1-native)');
        continue;
      }
    }
    let binding: NativeBinding;
    try {
      binding = env.loadInProcess(file);
    } catch (e) {
      const msg = (e as Error).message.split('\n')[0]!;
      fail(systemLibraryHint(msg) ?? `failed to load: ${msg}`);
      continue;
    }
    const missing = REQUIRED_EXPORTS.filter((k) => typeof binding[k] !== 'function');
    if (missing.length === 0) return binding;
    fail(`has no ${missing.join(', ')}: it predates this version of the library (rebuild it)`);
  }
  return undefined;
}

function describe(a: LoadAttempt): string {
  return `${a.device} ${a.source}: ${a.reason}`;
}

/** The error for a request nothing could serve: every attempt, then what to do. */
export function loadError(device: DeviceRequest, attempts: LoadAttempt[]): Sqlr1Error {
  const code: ErrorCode = device === 'cuda' ? 'ERR_NO_CUDA' : 'ERR_NATIVE_LOAD';
  const lines = attempts.map((a) => `  - ${a.device}, ${a.source} (${a.path}): ${a.reason}`);
  const todo = device === 'cuda'
    ? [
      `install ${platformPackages.cuda} (npm installs it with sqlr1-native on Linux x64 with glibc unless optional dependencies are omitted) and any CUDA 13 library named above,`,
      'or build the CUDA variant from source (`npm run build:cuda` in the repository; needs the CUDA toolkit with cuBLAS),',
      "or use device 'cpu' or 'auto'",
    ]
    : [
      `reinstall without omitting optional dependencies, so that npm installs ${platformPackages.cpu} (Linux x64, glibc),`,
      'or build from source: `SQLR1_BUILD_FROM_SOURCE=1 npm rebuild sqlr1-native` (or `npm rebuild sqlr1-native --build-from-source`; needs a C++17 compiler and CMake >= 3.18)',
    ];
  return new Sqlr1Error(code, `no native addon could be loaded for device '${device}'; tried:\n${lines.join('\n')}\nTo fix: ${todo.join('\n  ')}`);
}

/**
 * Loads a binary for `device` from the given places, uncached: `auto` takes CUDA when it loads and a device is
 * visible, and otherwise falls back to the CPU, logging why; `cuda` fails with ERR_NO_CUDA and `cpu` or `auto`
 * with ERR_NATIVE_LOAD, listing every place tried. `getBinding` is this with the real places and a cache.
 */
export function loadBinding(device: DeviceRequest, env: LoaderEnv, log: (msg: string) => void = () => {}): { binding: NativeBinding; device: Device } {
  const attempts: LoadAttempt[] = [];
  if (device !== 'cpu') {
    const cuda = env.cudaDisabled()
      ? (attempts.push({ device: 'cuda', source: 'SQLR1_NO_CUDA=1', path: '-', reason: 'CUDA disabled by the environment' }), undefined)
      : tryVariant('cuda', env, attempts);
    if (cuda) return { binding: cuda, device: 'cuda' };
    if (device === 'cuda') throw loadError('cuda', attempts);
    log(`device auto: using the CPU (${attempts.map(describe).join('; ')})`);
  }
  const cpu = tryVariant('cpu', env, attempts);
  if (!cpu) throw loadError(device, attempts);
  return { binding: cpu, device: 'cpu' };
}

const cache = new Map<DeviceRequest, { binding: NativeBinding; device: Device }>();
let cudaProbe: { ok: boolean; reason: string } | undefined;

/** Whether the CUDA variant loads and sees a device (probed in a child process first); cached for the process. */
export function probeCuda(): { ok: boolean; reason: string } {
  if (cudaProbe) return cudaProbe;
  try {
    getBinding('cuda');
    cudaProbe = { ok: true, reason: 'CUDA addon loaded and a device is visible' };
  } catch (e) {
    cudaProbe = { ok: false, reason: (e as Error).message.replace(/\s*\n\s*/g, ' ') };
  }
  return cudaProbe;
}

/**
 * Picks and loads a variant (see loadBinding); results are cached per request for the process.
 */
export function getBinding(device: DeviceRequest = 'auto', log: (msg: string) => void = defaultLog): { binding: NativeBinding; device: Device } {
  if (device !== 'auto' && device !== 'cpu' && device !== 'cuda') {
    throw new Sqlr1Error('ERR_INVALID_ARG', `device must be 'auto', 'cpu' or 'cuda', got ${JSON.stringify(device)}`);
  }
  const hit = cache.get(device);
  if (hit) return hit;
  const r = loadBinding(device, defaultLoaderEnv, log);
  cache.set(device, r);
  return r;
}

function defaultLog(msg: string): void {
  if (process.env.SQLR1_QUIET !== '1') process.stderr.write(`[sqlr1] ${msg}\n`);
}

/** Re-throws a native error (which carries a string `code`) as a Sqlr1Error. */
export function toSqlr1Error(e: unknown): Sqlr1Error {
  if (e instanceof Sqlr1Error) return e;
  const err = e as { code?: unknown; message?: unknown };
  const code = typeof err?.code === 'string' && err.code.startsWith('ERR_') ? (err.code as ErrorCode) : 'ERR_INTERNAL';
  return new Sqlr1Error(code, typeof err?.message === 'string' ? err.message : String(e), { cause: e });
}

/** Runs a native call and converts its errors. */
export async function callNative<T>(fn: () => Promise<T> | T): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw toSqlr1Error(e);
  }
}

export function callNativeSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw toSqlr1Error(e);
  }
}
