/**
 * The training SwiGLU kernel (native/cuda/swiglu.cu) against float64 loops: h = silu(g) u, du = dh silu(g) and
 * dg = dh u silu'(g), with the rank-r LoRA terms of gate, up and down added on the fly (each optional), for ranks
 * that fill one shared-memory chunk of 16, leave part of one, and span two, and sizes that end inside a tile.
 *
 * Tolerance: float32 arithmetic with a fast exp (~2 ulp) and r-term sums: relative error ~1e-6 per element, so
 * nmse ~1e-12; the bound 1e-10 leaves room and still catches any indexing or formula error (those give ~1).
 */
import t from 'tap';
import { cudaSkipReason, testHooks, nmse, randomArray, toBf16 } from '../helpers/native.js';

const skip = cudaSkipReason();

function reference(F: number, T: number, r: number, a: Record<string, Float32Array | undefined>) {
  const h = new Float64Array(F * T), dg = new Float64Array(F * T), du = new Float64Array(F * T);
  for (let tk = 0; tk < T; tk++) {
    for (let f = 0; f < F; f++) {
      const i = tk * F + f;
      let g = a.g![i]!, u = a.u![i]!, dh = a.dh![i]!;
      for (let k = 0; k < r; k++) {
        if (a.bg) g += a.bg[f * r + k]! * a.zg![tk * r + k]!;
        if (a.bu) u += a.bu[f * r + k]! * a.zu![tk * r + k]!;
        if (a.ad) dh += a.ad[k * F + f]! * a.dzd![tk * r + k]!;
      }
      const sig = 1 / (1 + Math.exp(-g));
      h[i] = g * sig * u;
      du[i] = dh * g * sig;
      dg[i] = dh * u * sig * (1 + g * (1 - sig));
    }
  }
  return { h, dg, du };
}

/** Activations and the LoRA terms named in `lora` ('all', 'none', or names joined by '+'). */
function inputs(F: number, T: number, r: number, lora: string, arr: (n: number, s?: number) => Float32Array) {
  const a: Record<string, Float32Array | undefined> = { g: arr(F * T, 4), u: arr(F * T), dh: arr(F * T) };
  if (lora === 'all' || lora.includes('gate')) { a.bg = arr(r * F, 0.5); a.zg = arr(r * T, 0.5); }
  if (lora === 'all' || lora.includes('up')) { a.bu = arr(r * F, 0.5); a.zu = arr(r * T, 0.5); }
  if (lora === 'all' || lora.includes('down')) { a.ad = arr(r * F, 0.5); a.dzd = arr(r * T, 0.5); }
  return a;
}

t.test('SwiGLU kernel matches float64 loops', { skip }, async (t) => {
  let seed = 100;
  for (const [F, T, r, lora] of [[200, 37, 16, 'all'], [64, 16, 5, 'gate+down'], [130, 50, 33, 'up'], [96, 20, 0, 'none']] as const) {
    const arr = (n: number, s = 2) => randomArray(n, seed++, s);
    const a = inputs(F, T, r, lora, arr);
    const ref = reference(F, T, r, a);
    const got = testHooks('cuda').swigluCuda({ F, T, rank: r, ...(a as { g: Float32Array; u: Float32Array; dh: Float32Array }), bf16: true });
    for (const key of ['h', 'dg', 'du'] as const) {
      const e = nmse(got[key]!, ref[key]);
      t.ok(e <= 1e-10, `F ${F}, T ${T}, rank ${r}, LoRA on ${lora}: ${key} nmse ${e.toExponential(2)} <= 1e-10`);
    }
    // The BF16 copies are the F32 results rounded to nearest even: bit for bit.
    for (const [key, words] of [['dg', got.dgBf16], ['du', got.duBf16]] as const) {
      const want = new Uint32Array(toBf16(got[key]!).buffer);
      t.ok(words && words.every((w, i) => w === want[i]! >>> 16), `F ${F}, T ${T}: the BF16 copy of ${key} is its F32 value rounded`);
    }
  }
});

// In training the kernel reads G, U, zg and zu as rows of one product's output [W_g; W_u; s A_g; s A_u] x, so
// their token stride is wider than their rows; forward-only passes (no dh) compute h alone.
t.test('SwiGLU kernel on strided rows, backward and forward only', { skip }, async (t) => {
  let seed = 500;
  const [F, T, r] = [150, 41, 16];
  const ld = 2 * F + 2 * r + 3, ldz = ld;  // G at row 0, U at F, zg at 2F, zu at 2F + r (as in training), plus padding
  const arr = (n: number, s = 2) => randomArray(n, seed++, s);
  const dense = { g: arr(F * T, 4), u: arr(F * T), dh: arr(F * T), bg: arr(r * F, 0.5), zg: arr(r * T, 0.5), bu: arr(r * F, 0.5), zu: arr(r * T, 0.5) };
  const widen = (x: Float32Array, rows: number, stride: number) => {
    const w = arr(stride * T, 9);  // filler the kernel must leave alone
    for (let tk = 0; tk < T; tk++) w.set(x.subarray(tk * rows, (tk + 1) * rows), tk * stride);
    return w;
  };
  const narrow = (w: Float32Array, rows: number, stride: number) => {
    const x = new Float32Array(rows * T);
    for (let tk = 0; tk < T; tk++) x.set(w.subarray(tk * stride, tk * stride + rows), tk * rows);
    return x;
  };
  const ref = reference(F, T, r, dense);
  for (const backward of [true, false]) {
    const g = widen(dense.g, F, ld), u = widen(dense.u, F, ld);
    const [g0, u0] = [Float32Array.from(g), Float32Array.from(u)];
    const got = testHooks('cuda').swigluCuda({
      F, T, rank: r, ld, ldz, g, u, ...(backward ? { dh: dense.dh } : {}),
      bg: dense.bg, zg: widen(dense.zg, r, ldz), bu: dense.bu, zu: widen(dense.zu, r, ldz),
    });
    const mode = backward ? 'backward' : 'forward only';
    t.ok(nmse(narrow(got.h, F, ld), ref.h) <= 1e-10, `${mode}: h from strided rows`);
    const untouched = (w: Float32Array, w0: Float32Array) => w.every((v, i) => i % ld < F || v === w0[i]);
    t.ok(untouched(got.h, g0), `${mode}: nothing written outside G's rows`);
    if (backward) {
      t.ok(nmse(narrow(got.dg!, F, ld), ref.dg) <= 1e-10, 'backward: dg into U\'s strided rows');
      t.ok(nmse(got.du!, ref.du) <= 1e-10, 'backward: du');
    } else {
      t.equal(got.dg, undefined, 'forward only: no dg');
    }
  }
});

// With gradients given (rank <= 16), the kernel also adds the adapters' gradient sums over the tokens:
// dBg[k, f] += sum_t zg[k, t] dg[f, t], dBu likewise with du, dAd[f, k] += sum_t h[f, t] dzd[k, t]. Float32 sums of
// T terms (in token blocks, then added in block order) against float64: relative error ~1e-7 sqrt(T) per
// element, so nmse ~1e-13; the bound 1e-10 still catches any indexing or layout error.
t.test('SwiGLU kernel adds the adapters\' gradient sums', { skip }, async (t) => {
  let seed = 900;
  for (const [F, T, r, lora] of [[300, 300, 16, 'all'], [70, 45, 5, 'gate+down'], [257, 129, 1, 'up']] as const) {
    const arr = (n: number, s = 2) => randomArray(n, seed++, s);
    const a = inputs(F, T, r, lora, arr);
    const ref = reference(F, T, r, a);
    const g0 = { bg: a.bg && arr(r * F), bu: a.bu && arr(r * F), ad: a.ad && arr(r * F) };
    const want: Record<string, Float64Array> = {};
    if (g0.bg) want.bg = Float64Array.from(g0.bg);
    if (g0.bu) want.bu = Float64Array.from(g0.bu);
    if (g0.ad) want.ad = Float64Array.from(g0.ad);
    for (let tk = 0; tk < T; tk++) {
      for (let f = 0; f < F; f++) {
        for (let k = 0; k < r; k++) {
          if (want.bg) want.bg[f * r + k] += a.zg![tk * r + k]! * ref.dg[tk * F + f]!;
          if (want.bu) want.bu[f * r + k] += a.zu![tk * r + k]! * ref.du[tk * F + f]!;
          if (want.ad) want.ad[k * F + f] += ref.h[tk * F + f]! * a.dzd![tk * r + k]!;
        }
      }
    }
    const grads = Object.fromEntries(Object.entries(g0).filter(([, v]) => v)) as { bg?: Float32Array; bu?: Float32Array; ad?: Float32Array };
    const got = testHooks('cuda').swigluCuda({ F, T, rank: r, ...(a as { g: Float32Array; u: Float32Array; dh: Float32Array }), grads, bf16: true });
    t.ok(nmse(got.h, ref.h) <= 1e-10, `F ${F}, T ${T}, rank ${r}, LoRA on ${lora}: h`);
    for (const [key, w] of Object.entries(want)) {
      const e = nmse(got.grads![key as 'bg']!, w);
      t.ok(e <= 1e-10, `F ${F}, T ${T}, rank ${r}, LoRA on ${lora}: d${key} nmse ${e.toExponential(2)} <= 1e-10`);
    }
    // The F32 value the kernel rounds differs from float64 by ~1e-7 relative: its BF16 word is within one BF16
    // ulp (2^-8 relative) of the reference.
    const words = new Uint32Array(got.dgBf16!.length);
    got.dgBf16!.forEach((w, i) => { words[i] = w << 16; });
    const vals = new Float32Array(words.buffer);
    let off = 0;
    for (let i = 0; i < F * T; i++) if (Math.abs(vals[i]! - ref.dg[i]!) > 2 ** -7 * Math.abs(ref.dg[i]!) + 1e-30) off++;
    t.equal(off, 0, `F ${F}, T ${T}: the BF16 copy of dg still comes out`);
  }
});

t.test('SwiGLU kernel rejects bad requests with typed errors', async (t) => {
  const b = testHooks('cpu');
  const x = new Float32Array(8);
  t.throws(() => b.swigluCuda({ F: 4, T: 2, rank: 1, g: x, u: x, dh: new Float32Array(7) }), { code: 'ERR_INVALID_ARG' }, 'an array of the wrong size');
  t.throws(() => b.swigluCuda({ F: 4, T: 2, rank: 1, g: x, u: x, dh: x, bg: new Float32Array(4) }), { code: 'ERR_INVALID_ARG' }, 'half a LoRA term');
  t.throws(() => b.swigluCuda({ F: 0, T: 2, rank: 1, g: x, u: x, dh: x }), { code: 'ERR_INVALID_ARG' }, 'a zero dimension');
  t.throws(() => b.swigluCuda({ F: 4, T: 2, rank: 1, g: x, u: x, dh: x, ld: 3 }), { code: 'ERR_INVALID_ARG' }, 'a stride below F');
  if (!skip) {
    const big = new Float32Array(17 * 4);
    t.throws(() => testHooks('cuda').swigluCuda({ F: 4, T: 2, rank: 17, g: x, u: x, dh: x, bg: big, zg: new Float32Array(34), grads: { bg: big } }),
      { code: 'ERR_INVALID_ARG' }, 'gradient sums above rank 16');
  }
  t.throws(() => b.swigluCuda({ F: 4, T: 2, rank: 1, g: x, u: x, ad: new Float32Array(4), dzd: new Float32Array(2) }), { code: 'ERR_INVALID_ARG' },
    'the down term without dh');
  if (skip) t.throws(() => b.swigluCuda({ F: 4, T: 2, rank: 0, g: x, u: x, dh: x }), { code: 'ERR_NO_CUDA' }, 'no CUDA in this binary or machine');
});
