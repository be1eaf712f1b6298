/** Shared helpers for the native tests: device discovery, error metrics, tiny synthesized models. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getBinding, probeCuda } from '../../lib/native/binding.js';
import type { NativeBinding, NativeTestHooks } from '../../lib/native/types.js';
import { makeModel, type ModelShape, type ModelType } from '../../lib/model/index.js';

/**
 * Set by the GPU check (scripts/gpu-check.sh): there a CUDA test that cannot run is a failure, not a skip, so a
 * CUDA addon that fails to load cannot pass the run with every CUDA test skipped.
 */
export const REQUIRE_CUDA = process.env.SQLR1_REQUIRE_CUDA === '1';

/** Whether CUDA tests can run; throws (failing the test file, with the probe's reason) under SQLR1_REQUIRE_CUDA=1. */
export function cudaUsable(): boolean {
  const p = probeCuda();
  if (!p.ok && REQUIRE_CUDA) {
    const msg = `SQLR1_REQUIRE_CUDA=1 but CUDA is not usable: ${p.reason}`;
    process.stderr.write(`${msg}\n`);
    throw new Error(msg);
  }
  return p.ok;
}

/**
 * Devices to test on: the CPU, and CUDA too where a device and a CUDA build exist (required under
 * SQLR1_REQUIRE_CUDA=1). SQLR1_TEST_DEVICES=cuda keeps only the CUDA cases: the GPU check sets it, since CI runs
 * the CPU cases (a CUDA case still builds its own CPU references where it compares with one).
 */
export function testDevices(): ('cpu' | 'cuda')[] {
  const only = process.env.SQLR1_TEST_DEVICES;
  if (only !== undefined && only !== '' && only !== 'cuda') throw new Error(`SQLR1_TEST_DEVICES must be 'cuda' or unset, got ${JSON.stringify(only)}`);
  if (only === 'cuda') {
    if (!cudaUsable()) throw new Error(`SQLR1_TEST_DEVICES=cuda but CUDA is not usable: ${probeCuda().reason}`);
    return ['cuda'];
  }
  return cudaUsable() ? ['cpu', 'cuda'] : ['cpu'];
}

/** The skip reason of a CUDA-only test, or false when it can run (throws under SQLR1_REQUIRE_CUDA=1 instead of skipping). */
export function cudaSkipReason(): string | false {
  return cudaUsable() ? false : `no CUDA: ${probeCuda().reason}`;
}

export function binding(device: 'cpu' | 'cuda'): NativeBinding {
  return getBinding(device, () => undefined).binding;
}

/** The addon's test-only kernel entry points (not part of its production surface). */
export function testHooks(device: 'cpu' | 'cuda'): NativeTestHooks {
  return binding(device).testHooks();
}

/** Normalized mean squared error mse(a, ref) / mse(ref, 0), as in ggml's test-backend-ops. NaN -> Infinity. */
export function nmse(a: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (a.length !== ref.length) throw new Error(`length mismatch ${a.length} vs ${ref.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - ref[i]!;
    if (!Number.isFinite(a[i]!)) return Infinity;
    num += d * d;
    den += ref[i]! * ref[i]!;
  }
  return den === 0 ? num : num / den;
}

/** A seeded uniform generator in [-1, 1) (mulberry32). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2147483648 - 1;
  };
}

export function randomArray(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = r() * scale;
  return a;
}

/** Rounds a float to the nearest IEEE half value (round to nearest even), for references of f16 inputs. */
export function toHalf(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const ax = Math.abs(x);
  if (ax >= 65520) return Math.sign(x) * Infinity;
  const e = Math.max(Math.floor(Math.log2(ax)), -14);
  const ulp = 2 ** (e - 10);
  const q = ax / ulp;
  let r = Math.round(q);
  if (Math.abs(q - Math.trunc(q) - 0.5) < 1e-12 && Math.trunc(q) % 2 === 0) r = Math.trunc(q);
  return Math.sign(x) * r * ulp;
}

/** Rounds float32 values to bfloat16 (round to nearest even), for references of BF16 inputs. */
export function toBf16(a: Float32Array): Float32Array {
  const out = new Float32Array(a);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i]!;
    bits[i] = ((b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000) >>> 0;
  }
  return out;
}

/** A temp folder removed when the test ends. */
export function tempDir(t: { teardown(fn: () => void): void }, prefix = 'sqlr1-test-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** Writes a synthesized model into `dir` and returns its path. */
export async function tinyModel(dir: string, type: ModelType = 'f32', shape: ModelShape = 'tiny', seed = 7): Promise<string> {
  const out = join(dir, `${shape}-${type}-${seed}.gguf`);
  await makeModel({ shape, type, out, seed });
  return out;
}
