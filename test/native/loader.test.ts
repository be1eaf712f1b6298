/**
 * The addon loader's search order and its collected error: local build before platform package, CUDA probed
 * before the CPU for 'auto', every failed place listed with what to do, and a missing CUDA library named with
 * its install hint. The places are replaced by a fake environment; the dynamic loader's own message for a
 * missing library comes from a real shared object linked against a library that is then removed.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cudaArchitecturesRun, defaultLoaderEnv, loadBinding, missingCudaLibraryHint, platformPackages, systemLibraryHint, type Device, type LoaderEnv } from '../../lib/native/binding.js';
import type { NativeBinding } from '../../lib/native/types.js';

const CUBLAS_MISSING = 'libcublas_sqlr1_absent.so.13: cannot open shared object file: No such file or directory';

/** A fake set of places: `local` and `pkg` map a variant to its .node path; loading returns a tagged object. */
function fakeEnv(o: {
  local?: Partial<Record<Device, string>>;
  pkg?: Partial<Record<Device, string>>;
  flags?: string[];
  probe?: (file: string) => ReturnType<LoaderEnv['probeInChild']>;
  broken?: string[];
  stale?: string[];
  cudaDisabled?: boolean;
}): LoaderEnv & { loaded: string[]; probed: string[] } {
  const loaded: string[] = [];
  const probed: string[] = [];
  const byName = (name: string) => (Object.keys(platformPackages) as Device[]).find((d) => platformPackages[d] === name)!;
  return {
    loaded,
    probed,
    localBinary: (d) => {
      const f = o.local?.[d];
      if (!f) throw new Error('No native build was found');
      return f;
    },
    packageBinary: (name) => o.pkg?.[byName(name)],
    cpuFlags: () => new Set(o.flags ?? ['sse4_2', 'avx', 'avx2', 'bmi2', 'fma', 'f16c']),
    cudaDisabled: () => o.cudaDisabled ?? false,
    probeInChild: (file) => {
      probed.push(file);
      return o.probe ? o.probe(file) : { ok: true, devices: 1 };
    },
    loadInProcess: (file) => {
      if (o.broken?.includes(file)) throw new Error(`${file}: invalid ELF header`);
      loaded.push(file);
      // A current binary has every export the library calls; a stale one (o.stale) has none of them.
      if (o.stale?.includes(file)) return { file } as unknown as NativeBinding;
      return new Proxy({ file }, { get: (b, k) => (k in b ? b[k as 'file'] : () => undefined) }) as unknown as NativeBinding;
    },
  };
}

const fileOf = (b: NativeBinding) => (b as unknown as { file: string }).file;

t.test('auto: CUDA package first, probed in a child, then loaded', async (t) => {
  const env = fakeEnv({ pkg: { cuda: '/p/cuda.node', cpu: '/p/cpu.node' } });
  const r = loadBinding('auto', env);
  t.equal(r.device, 'cuda');
  t.equal(fileOf(r.binding), '/p/cuda.node');
  t.same(env.probed, ['/p/cuda.node'], 'the CUDA binary is probed in a child before it is loaded here');
});

t.test('a local build comes before the platform package of the same variant', async (t) => {
  const env = fakeEnv({ local: { cpu: '/l/cpu.node' }, pkg: { cpu: '/p/cpu.node' } });
  const r = loadBinding('cpu', env);
  t.equal(fileOf(r.binding), '/l/cpu.node');
  t.same(env.loaded, ['/l/cpu.node']);
});

t.test("auto falls back to the CPU and says which CUDA library is missing", async (t) => {
  const logs: string[] = [];
  const env = fakeEnv({ pkg: { cuda: '/p/cuda.node', cpu: '/p/cpu.node' }, probe: () => ({ ok: false, reason: CUBLAS_MISSING }) });
  const r = loadBinding('auto', env, (m) => logs.push(m));
  t.equal(r.device, 'cpu');
  t.equal(fileOf(r.binding), '/p/cpu.node');
  t.equal(logs.length, 1);
  t.match(logs[0], /using the CPU/);
  t.match(logs[0], /libcublas_sqlr1_absent\.so\.13 \(cuBLAS 13\) is missing: install `libcublas-13-0`/);
  t.notOk(env.loaded.includes('/p/cuda.node'), 'a CUDA binary that failed its probe is never loaded in this process');
});

t.test("device 'cuda' without a usable CUDA binary: ERR_NO_CUDA listing each place", async (t) => {
  const env = fakeEnv({ local: { cuda: '/l/cuda.node' }, pkg: { cuda: '/p/cuda.node', cpu: '/p/cpu.node' }, probe: (f) => (f === '/l/cuda.node' ? { ok: true, devices: 0 } : { ok: false, reason: CUBLAS_MISSING }) });
  const err = t.throws(() => loadBinding('cuda', env)) as Error & { code: string };
  t.equal(err.code, 'ERR_NO_CUDA');
  t.match(err.message, /cuda, local build \(\/l\/cuda\.node\): loads, but no CUDA device is visible/);
  t.match(err.message, /cuda, @sqlr1-native\/linux-x64-cuda13 \(\/p\/cuda\.node\): libcublas_sqlr1_absent\.so\.13/);
  t.notMatch(err.message, /cpu,/, "device 'cuda' never tries the CPU");
  t.match(err.message, /To fix: /);
  t.same(env.loaded, []);
});

t.test('which GPUs run which CUDA architectures', async (t) => {
  const pkg = '90-real,90-virtual';                       // an sm_90-only build: sm_90 code + PTX 9.0
  t.equal(cudaArchitecturesRun(pkg, '9.0'), true, 'H100/H200: machine code');
  t.equal(cudaArchitecturesRun(pkg, '10.0'), true, 'B200: PTX compiled by the driver');
  t.equal(cudaArchitecturesRun(pkg, '12.0'), true, 'RTX 50xx: PTX');
  for (const cc of ['8.0', '8.6', '8.9', '7.5']) t.equal(cudaArchitecturesRun(pkg, cc), false, `${cc}: nothing it can run`);
  const wide = '80-real,86-real,89-real,90-real,90-virtual';   // the CUDA package's default
  for (const cc of ['8.0', '8.6', '8.7', '8.9', '9.0', '10.0']) t.equal(cudaArchitecturesRun(wide, cc), true, `${cc} with ${wide}`);
  t.equal(cudaArchitecturesRun(wide, '7.5'), false);
  t.equal(cudaArchitecturesRun('86-real', '8.0'), false, 'machine code does not run on a lower minor version');
  t.equal(cudaArchitecturesRun('86-real', '9.0'), false, 'nor on another major version');
  t.equal(cudaArchitecturesRun('80', '8.9'), true, 'a bare number is code and PTX');
  t.equal(cudaArchitecturesRun('all', '9.0'), undefined, 'a form it cannot read: no verdict');
  t.equal(cudaArchitecturesRun('90a-real', '9.0'), undefined);
  t.equal(cudaArchitecturesRun(pkg, ''), undefined, 'unknown compute capability: no verdict');
});

t.test('a CUDA binary without code for the GPU is refused in the probe; auto falls back to the CPU and says why', async (t) => {
  const a100 = { name: 'NVIDIA A100-SXM4-80GB', computeCapability: '8.0' };
  const env = fakeEnv({ pkg: { cuda: '/p/cuda.node', cpu: '/p/cpu.node' }, probe: () => ({ ok: true, devices: 1, gpu: a100, architectures: '90-real,90-virtual' }) });
  const err = t.throws(() => loadBinding('cuda', env)) as Error & { code: string };
  t.equal(err.code, 'ERR_NO_CUDA');
  t.match(err.message, /carries code for 90-real,90-virtual, which the NVIDIA A100-SXM4-80GB \(compute capability 8\.0\) cannot run: build the CUDA variant from source/);
  t.notOk(env.loaded.includes('/p/cuda.node'), 'never loaded in this process');
  const logs: string[] = [];
  const auto = loadBinding('auto', env, (m) => logs.push(m));
  t.equal(auto.device, 'cpu');
  t.match(logs.join('\n'), /compute capability 8\.0/);
  // The same binary on an H200 loads.
  const h200 = fakeEnv({ pkg: { cuda: '/p/cuda.node' }, probe: () => ({ ok: true, devices: 1, gpu: { name: 'NVIDIA H200', computeCapability: '9.0' }, architectures: '90-real,90-virtual' }) });
  t.equal(loadBinding('cuda', h200).device, 'cuda');
});

t.test('nothing usable: one ERR_NATIVE_LOAD with all four places and what to do', async (t) => {
  const env = fakeEnv({ pkg: { cpu: '/p/cpu.node' }, broken: ['/p/cpu.node'] });
  const err = t.throws(() => loadBinding('auto', env)) as Error & { code: string };
  t.equal(err.code, 'ERR_NATIVE_LOAD');
  const lines = err.message.split('\n').filter((l) => l.startsWith('  - '));
  t.equal(lines.length, 4, err.message);
  t.match(lines[0], /cuda, local build .*: not built/);
  t.match(lines[1], /cuda, @sqlr1-native\/linux-x64-cuda13 .*: not installed/);
  t.match(lines[2], /cpu, local build .*: not built/);
  t.match(lines[3], /cpu, @sqlr1-native\/linux-x64 \(\/p\/cpu\.node\): failed to load: .*invalid ELF header/);
  t.match(err.message, /npm rebuild sqlr1-native --build-from-source/);
});

t.test('the portable CPU binary is skipped on a CPU without AVX2', async (t) => {
  const env = fakeEnv({ pkg: { cpu: '/p/cpu.node' }, flags: ['sse4_2', 'avx'] });
  const err = t.throws(() => loadBinding('cpu', env)) as Error & { code: string };
  t.equal(err.code, 'ERR_NATIVE_LOAD');
  t.match(err.message, /this CPU lacks avx2, bmi2, fma, f16c/);
  t.same(env.loaded, [], 'never loaded (it would stop on an illegal instruction)');
  const local = fakeEnv({ local: { cpu: '/l/cpu.node' }, pkg: { cpu: '/p/cpu.node' }, flags: ['sse4_2'] });
  t.equal(fileOf(loadBinding('cpu', local).binding), '/l/cpu.node', 'a local build is built for this CPU');
});

t.test('SQLR1_NO_CUDA: auto goes to the CPU without probing', async (t) => {
  const env = fakeEnv({ pkg: { cuda: '/p/cuda.node', cpu: '/p/cpu.node' }, cudaDisabled: true });
  t.equal(loadBinding('auto', env).device, 'cpu');
  t.same(env.probed, []);
});

t.test('missing-library hints', async (t) => {
  t.match(missingCudaLibraryHint('libcudart.so.13: cannot open shared object file: No such file or directory')!, /the CUDA 13 runtime\) is missing: install `cuda-cudart-13-0`/);
  t.match(missingCudaLibraryHint('libcublasLt.so.13: cannot open shared object file')!, /libcublasLt\.so\.13 \(cuBLAS 13\).*`libcublas-13-0`/);
  t.match(missingCudaLibraryHint('libcuda.so.1: cannot open shared object file')!, /NVIDIA driver/);
  t.equal(missingCudaLibraryHint('undefined symbol: foo'), undefined);
  t.match(systemLibraryHint("/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.34' not found (required by /p/cpu.node)")!, /glibc is older than the prebuilt binary needs \(GLIBC_2\.34\): build from source/);
  t.match(systemLibraryHint("libstdc++.so.6: version `GLIBCXX_3.4.29' not found")!, /libstdc\+\+ is older/);
  t.match(systemLibraryHint('libgomp.so.1: cannot open shared object file: No such file or directory')!, /install libgomp1/);
  t.equal(systemLibraryHint('invalid ELF header'), undefined);
});

t.test('a glibc too old for the CPU package is reported with the fix', async (t) => {
  const env = fakeEnv({ pkg: { cpu: '/p/cpu.node' } });
  env.loadInProcess = () => { throw new Error("/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.34' not found (required by /p/cpu.node)"); };
  const err = t.throws(() => loadBinding('cpu', env)) as Error & { code: string };
  t.equal(err.code, 'ERR_NATIVE_LOAD');
  t.match(err.message, /cpu, @sqlr1-native\/linux-x64 \(\/p\/cpu\.node\): this system's glibc is older .*GLIBC_2\.34/);
  t.match(err.message, /--build-from-source/);
});

t.test("the dynamic loader's message for a missing library, through the real child probe", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sqlr1-loader-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // A stand-in libcublas_sqlr1_absent.so.13 to link against, removed afterwards: the addon then names a library that is absent.
  writeFileSync(join(dir, 'lib.c'), 'int cublas_stand_in(void) { return 1; }\n');
  writeFileSync(join(dir, 'addon.c'), 'int cublas_stand_in(void);\nint use(void) { return cublas_stand_in(); }\n');
  execFileSync('cc', ['-shared', '-fPIC', '-Wl,-soname,libcublas_sqlr1_absent.so.13', '-o', join(dir, 'libcublas_sqlr1_absent.so.13'), join(dir, 'lib.c')]);
  execFileSync('cc', ['-shared', '-fPIC', '-o', join(dir, 'fake.node'), join(dir, 'addon.c'), join(dir, 'libcublas_sqlr1_absent.so.13')]);
  rmSync(join(dir, 'libcublas_sqlr1_absent.so.13'));
  const probe = defaultLoaderEnv.probeInChild(join(dir, 'fake.node'));
  t.equal(probe.ok, false);
  const reason = probe.ok ? '' : probe.reason;
  t.match(reason, /libcublas_sqlr1_absent\.so\.13: cannot open shared object file/);
  t.match(missingCudaLibraryHint(reason)!, /libcublas_sqlr1_absent\.so\.13 \(cuBLAS 13\) is missing/);
});

t.test('a stale local build (missing exports) is refused and the platform package serves', async (t) => {
  const env = fakeEnv({ local: { cpu: '/b/cpu.node' }, pkg: { cpu: '/p/cpu.node' }, stale: ['/b/cpu.node'] });
  const r = loadBinding('cpu', env);
  t.equal(fileOf(r.binding), '/p/cpu.node');
  const only = fakeEnv({ local: { cpu: '/b/cpu.node' }, stale: ['/b/cpu.node'] });
  t.throws(() => loadBinding('cpu', only), { code: 'ERR_NATIVE_LOAD', message: /predates this version/ });
});
