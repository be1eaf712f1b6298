/**
 * Plain-loop float64 references and a finite-difference checker for the tensor-op tests (test/train/*.test.ts).
 */
import { Tensor, backward, evaluate, type RunOptions } from '../../lib/train/index.js';
import { rng } from '../helpers/native.js';

export type Dev = 'cpu' | 'cuda';

export function size(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** For each flat index of `out`, the flat index of `inp` that broadcasts to it (numpy rule, aligned right). */
export function bcastMap(out: readonly number[], inp: readonly number[]): Int32Array {
  const n = size(out);
  const map = new Int32Array(n);
  const off = out.length - inp.length;
  for (let i = 0; i < n; i++) {
    let rem = i, idx = 0, stride = 1;
    for (let d = out.length - 1; d >= 0; d--) {
      const c = rem % out[d]!;
      rem = Math.floor(rem / out[d]!);
      if (d >= off) {
        const di = inp[d - off]!;
        idx += (di === 1 ? 0 : c) * stride;
        stride *= di;
      }
    }
    map[i] = idx;
  }
  return map;
}

export function bcastShape(a: readonly number[], b: readonly number[]): number[] {
  const covers = (s: readonly number[], big: readonly number[]) =>
    s.length <= big.length && s.every((d, i) => d === big[big.length - s.length + i] || d === 1);
  if (covers(b, a)) return [...a];
  if (covers(a, b)) return [...b];
  throw new Error(`no broadcast between [${a}] and [${b}]`);
}

/** Element-wise binary reference with broadcasting. */
export function refBinary(a: ArrayLike<number>, as: readonly number[], b: ArrayLike<number>, bs: readonly number[], f: (x: number, y: number) => number): { data: Float64Array; shape: number[] } {
  const shape = bcastShape(as, bs);
  const ma = bcastMap(shape, as), mb = bcastMap(shape, bs);
  const data = new Float64Array(size(shape));
  for (let i = 0; i < data.length; i++) data[i] = f(a[ma[i]!]!, b[mb[i]!]!);
  return { data, shape };
}

/** Sum over the last dimension, kept as 1. */
export function refSumRows(x: ArrayLike<number>, shape: readonly number[], w?: ArrayLike<number>): Float64Array {
  const cols = shape.length === 0 ? 1 : shape[shape.length - 1]!;
  const rows = size(shape) / cols;
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[r]! += x[r * cols + c]! * (w ? w[r * cols + c]! : 1);
  return out;
}

/** Uniform values in [lo, hi), seeded. */
export function uniform(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = rng(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = lo + ((r() + 1) / 2) * (hi - lo);
  return a;
}

/** Standard normal values (Box-Muller over the seeded uniform generator). */
export function normal(n: number, seed: number): Float64Array {
  const r = rng(seed);
  const a = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const u1 = Math.max((r() + 1) / 2, 1e-12), u2 = (r() + 1) / 2;
    a[i] = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
  return a;
}

/** max |a - ref| / (atol + rtol |ref|): <= 1 passes. */
export function worstRatio(a: ArrayLike<number>, ref: ArrayLike<number>, atol: number, rtol: number): number {
  if (a.length !== ref.length) return Infinity;
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const e = Math.abs(a[i]! - ref[i]!) / (atol + rtol * Math.abs(ref[i]!));
    if (!(e <= worst)) worst = Number.isNaN(e) ? Infinity : e;
  }
  return worst;
}

export interface GradCheck {
  /** Largest |analytic - fd| / tolerance over all elements (<= 1 passes). */
  worst: number;
  where: string;
  analytic: Float32Array[];
  numeric: Float64Array[];
}

/**
 * Central finite differences of the native forward against the native backward, in F32.
 *
 * `build` maps the input tensors to a scalar loss. Each input element x gets step h = 1e-3 * max(1, |x|) and
 * fd = (L(x + h) - L(x - h)) / (2h), each L a forward run of the same graph in float32.
 *
 * Tolerance, per element: |analytic - fd| <= 8 * 2^-24 * S / h + 1e-3 * |analytic| + 1e-6, where S is the
 * float32 rounding scale of the loss: S = |L| + sum over inputs of |x * dL/dx| + `scale` (the caller's sum of
 * |terms| of the final reduction). A rounding error of eps |v| in any intermediate v moves L by about
 * eps |v dL/dv|, and those sums bound that. Why the bound:
 *  - rounding: each of L(x+h), L(x-h) carries an absolute float32 error of a few ulps of S; their difference
 *    divided by 2h is then <= ~4 * 2^-24 * S / h; we allow twice that;
 *  - truncation: h^2/6 * |f'''|, with h <= 1e-3 relative and smooth ops on O(1) inputs, is ~1e-7 relative;
 *  - the analytic gradient itself is float32 (a few ulps relative), far below 1e-3.
 * Inputs are chosen away from kinks (clamp bounds, min/max ties, relu at 0) by much more than h.
 */
export async function gradCheck(
  inputs: Array<{ data: Float32Array; shape: number[]; noGrad?: boolean }>,
  build: (xs: Tensor[]) => Tensor,
  scale: number,
  options: RunOptions = {},
): Promise<GradCheck> {
  const xs = inputs.map((x) => Tensor.constant(x.data, x.shape, { requiresGrad: !x.noGrad }));
  const res = await backward(build(xs), options);
  const analytic = xs.map((x, k) => res.grads.get(x) ?? new Float32Array(inputs[k]!.data.length));
  let S = Math.abs(res.loss) + scale;
  inputs.forEach((x, k) => x.data.forEach((v, i) => { S += Math.abs(v * analytic[k]![i]!); }));
  const numeric: Float64Array[] = [];
  let worst = 0, where = '';
  for (let k = 0; k < inputs.length; k++) {
    const base = inputs[k]!;
    const fd = new Float64Array(base.data.length);
    if (base.noGrad) { numeric.push(fd); continue; }
    for (let i = 0; i < base.data.length; i++) {
      const x0 = base.data[i]!;
      const h = 1e-3 * Math.max(1, Math.abs(x0));
      const evalAt = async (v: number) => {
        const d = Float32Array.from(base.data);
        d[i] = v;
        const consts = inputs.map((x, j) => Tensor.constant(j === k ? d : x.data, x.shape));
        const [out] = await evaluate([build(consts)], options);
        return { value: out![0]!, x: d[i]! };
      };
      const plus = await evalAt(x0 + h), minus = await evalAt(x0 - h);
      fd[i] = (plus.value - minus.value) / (plus.x - minus.x);  // the float32-rounded step actually taken
      const a = analytic[k]![i]!;
      const tol = 8 * 2 ** -24 * S / h + 1e-3 * Math.abs(a) + 1e-6;
      const e = Math.abs(a - fd[i]!) / tol;
      if (!(e <= worst)) {
        worst = Number.isNaN(e) ? Infinity : e;
        where = `input ${k} element ${i}: analytic ${a} fd ${fd[i]} (tol ${tol.toExponential(2)})`;
      }
    }
    numeric.push(fd);
  }
  return { worst, where, analytic, numeric };
}
