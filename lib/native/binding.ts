/**
 * Loads the native addon through node-gyp-build: a local build (bindings/<variant>/build/Release) first, then
 * a prebuilt binary (bindings/<variant>/prebuilds/<platform>-<arch>). The CPU and CUDA variants live in separate
 * folders. A CUDA binary is first loaded in a child process, so that a broken driver or missing library cannot
 * take down the caller's process.
 */
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sqlr1Error, type ErrorCode } from '../errors.js';
import type { NativeBinding } from './types.js';

export type DeviceRequest = 'auto' | 'cpu' | 'cuda';
export type Device = 'cpu' | 'cuda';

const require = createRequire(import.meta.url);
const nodeGypBuild = require('node-gyp-build') as (dir: string) => unknown;

/** The package root (the folder with package.json), from lib/native or dist/native. */
export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

const cache = new Map<Device, NativeBinding>();
let cudaProbe: { ok: boolean; reason: string } | undefined;

function variantDir(v: Device): string {
  return join(packageRoot, 'bindings', v);
}

function hasVariant(v: Device): boolean {
  const d = variantDir(v);
  return existsSync(join(d, 'build', 'Release', 'sqlr1.node')) || existsSync(join(d, 'prebuilds'));
}

/** The exports the library calls; a binary without one of them predates this package (a stale local build). */
const REQUIRED_EXPORTS: readonly (keyof NativeBinding)[] = [
  'Model', 'Context', 'LoraAdapter', 'ParamStore', 'createLora', 'loadLora', 'loadModel', 'makeModel', 'buildInfo',
  'cudaDevices', 'runGraph', 'createTrainer', 'broadcastShape',
  'adamwCheck',
];

function load(v: Device): NativeBinding {
  const hit = cache.get(v);
  if (hit) return hit;
  const hint = v === 'cuda' ? 'build it with `npm run build:cuda`' : 'build it with `npm run build:native`';
  let b: NativeBinding;
  try {
    b = nodeGypBuild(variantDir(v)) as NativeBinding;
  } catch (e) {
    throw new Sqlr1Error('ERR_NATIVE_LOAD', `could not load the ${v} addon from ${variantDir(v)}: ${(e as Error).message}; ${hint}`);
  }
  const missing = REQUIRED_EXPORTS.filter((k) => typeof b[k] !== 'function');
  if (missing.length > 0) {
    throw new Sqlr1Error('ERR_NATIVE_LOAD', `the ${v} addon in ${variantDir(v)} has no ${missing.join(', ')}: it predates this package; re${hint}`);
  }
  cache.set(v, b);
  return b;
}

/** Loads the CUDA variant in a child process and asks it for devices; cached for the process. */
export function probeCuda(): { ok: boolean; reason: string } {
  if (cudaProbe) return cudaProbe;
  if (process.env.SQLR1_NO_CUDA === '1') return (cudaProbe = { ok: false, reason: 'SQLR1_NO_CUDA=1' });
  if (!hasVariant('cuda')) return (cudaProbe = { ok: false, reason: 'no CUDA build (run `npm run build:cuda`)' });
  const script = `const b=require('node-gyp-build')(${JSON.stringify(variantDir('cuda'))});` +
    `process.stdout.write(JSON.stringify(b.cudaDevices()))`;
  const r = spawnSync(process.execPath, ['-e', script], { cwd: packageRoot, encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) {
    const why = (r.stderr || r.error?.message || `exit ${r.status ?? r.signal}`).trim().split('\n').slice(-1)[0];
    return (cudaProbe = { ok: false, reason: `the CUDA addon failed to load: ${why}` });
  }
  const devices = JSON.parse(r.stdout || '[]') as unknown[];
  if (devices.length === 0) return (cudaProbe = { ok: false, reason: 'no CUDA device is visible' });
  return (cudaProbe = { ok: true, reason: `${devices.length} CUDA device(s)` });
}

/**
 * Picks and loads a variant. `auto` takes CUDA when a device is usable and otherwise falls back to the CPU,
 * logging why; `cuda` fails with ERR_NO_CUDA when it is not usable.
 */
export function getBinding(device: DeviceRequest = 'auto', log: (msg: string) => void = defaultLog): { binding: NativeBinding; device: Device } {
  if (device !== 'auto' && device !== 'cpu' && device !== 'cuda') {
    throw new Sqlr1Error('ERR_INVALID_ARG', `device must be 'auto', 'cpu' or 'cuda', got ${JSON.stringify(device)}`);
  }
  if (device === 'cpu') return { binding: load('cpu'), device: 'cpu' };
  const probe = probeCuda();
  if (probe.ok) return { binding: load('cuda'), device: 'cuda' };
  if (device === 'cuda') throw new Sqlr1Error('ERR_NO_CUDA', `device 'cuda' requested but CUDA is not usable: ${probe.reason}`);
  log(`device auto: using the CPU (${probe.reason})`);
  return { binding: load('cpu'), device: 'cpu' };
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
