/**
 * The kernels the model graph uses, one op at a time: each backend against a plain-loop float64 reference,
 * and CUDA against the CPU on the same inputs (normalized MSE, as ggml's test-backend-ops does).
 *
 * Tolerances (NMSE) and why:
 *  - F32 weights: 1e-6. On the CPU, float32 accumulation (~1e-14 measured); CUDA runs F32 products on tensor
 *    cores at TF32-like precision (10-bit mantissa: ~1e-7 measured on an H100).
 *  - F16 / BF16 weights: the CPU backend also rounds the activations to the weight type before the dot
 *    product (bf16 keeps 8 mantissa bits: relative error ~4e-3 per element, NMSE ~1e-5); 5e-5 for F16, 5e-4 for BF16.
 *  - Quantized weights (q8_0, q4_0, q4_K, q6_K): the reference uses the dequantized weights, so the error comes
 *    from the activations being quantized to 8 bits per block: 5e-4 (ggml's own bound for such matmuls).
 *  - Flash attention: K/V are F16 and the reference uses the same F16-rounded values; the kernel also works
 *    with F16 intermediate products on some paths: 5e-4.
 *  - CUDA vs CPU: the same bounds, since both sides carry the errors above independently.
 */
import t from 'tap';
import { binding, nmse, randomArray, testDevices, toHalf } from '../helpers/native.js';
import type { NativeOpInput } from '../../lib/native/types.js';

type Dev = 'cpu' | 'cuda';
const devices = testDevices();

async function run(device: Dev, op: string, inputs: NativeOpInput[], params: number[] = []) {
  return binding(device).runOp({ op, device, inputs, params });
}

function matmulRef(a: ArrayLike<number>, b: ArrayLike<number>, K: number, N: number, M: number): Float64Array {
  // a: [K, N] (row n is a[n*K..]), b: [K, M]; out[m*N + n] = sum_k a[n,k] b[m,k]
  const out = new Float64Array(N * M);
  for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) {
    let s = 0;
    for (let k = 0; k < K; k++) s += a[n * K + k]! * b[m * K + k]!;
    out[m * N + n] = s;
  }
  return out;
}

const MATMUL_TOL: Record<string, number> = { f32: 1e-6, f16: 5e-5, bf16: 5e-4, q8_0: 5e-4, q4_0: 5e-4, q4_K: 5e-4, q6_K: 5e-4 };
// How far dequantized weights may be from the originals: a sanity bound on the quantizer itself.
const QUANT_ERR: Record<string, number> = { f32: 0, f16: 1e-6, bf16: 1e-4, q8_0: 1e-4, q4_0: 2e-2, q4_K: 1e-2, q6_K: 1e-3 };

for (const device of devices) {
  t.test(`mul_mat on ${device}`, async (t) => {
    for (const type of Object.keys(MATMUL_TOL)) {
      for (const [K, N, M] of [[256, 13, 1], [256, 7, 5], [512, 11, 17], [256, 33, 64], [64, 1000, 18]] as const) {
        if (K % 256 !== 0 && type.endsWith('K')) continue;  // k-quants need rows of 256
        const seed = K * 31 + N * 7 + M;
        const w = randomArray(K * N, seed);
        const x = randomArray(K * M, seed + 1);
        const wq = (await run('cpu', 'dequant', [{ data: w, shape: [K, N], type }])).data;
        t.ok(nmse(wq, w) <= QUANT_ERR[type]!, `dequant(${type}) close to the original weights (seed ${seed})`);
        const ref = matmulRef(wq, x, K, N, M);
        const out = await run(device, 'mul_mat', [{ data: w, shape: [K, N], type }, { data: x, shape: [K, M] }]);
        t.same(out.shape, [N, M, 1, 1]);
        const e = nmse(out.data, ref);
        t.ok(e <= MATMUL_TOL[type]!, `MUL_MAT(type_a=${type},k=${K},n=${N},m=${M}) nmse ${e.toExponential(2)} <= ${MATMUL_TOL[type]}`);
        if (device === 'cuda') {
          const cpu = await run('cpu', 'mul_mat', [{ data: w, shape: [K, N], type }, { data: x, shape: [K, M] }]);
          const ec = nmse(out.data, cpu.data);
          t.ok(ec <= MATMUL_TOL[type]!, `MUL_MAT(type_a=${type},k=${K},n=${N},m=${M}) cuda vs cpu nmse ${ec.toExponential(2)}`);
        }
      }
    }
  });

  // The input gradient through a frozen weight, dx = W^T dy, for every weight type and scratch type, against
  // float64 on the dequantized weights (so the quantization itself is not counted). Bounds per scratch type:
  // F16 rounds W and dy to 11-bit mantissas (5e-5); BF16 to 8 bits, relative error 2^-9 per factor, nmse
  // about 2 * (2^-9)^2 / 3 = 2.5e-6 per product, bound 1e-4 for sums of few terms; F32 is exact up to
  // float32 accumulation and, on CUDA, TF32-like products (1e-6, as MUL_MAT's f32 bound).
  const SCRATCH: [string, number, number][] = [['f16', 0, 5e-5], ['bf16', 1, 1e-4], ['f32', 2, 1e-6]];
  t.test(`input gradient through a frozen weight on ${device}`, async (t) => {
    for (const [scratch, kind, tol] of SCRATCH) for (const type of Object.keys(MATMUL_TOL)) {
      for (const [K, N, T] of [[256, 48, 7], [512, 13, 1]] as const) {
        const seed = K + N * 3 + T;
        const w = randomArray(K * N, seed);
        const dy = randomArray(N * T, seed + 1);
        const wq = (await run('cpu', 'dequant', [{ data: w, shape: [K, N], type }])).data;
        const ref = new Float64Array(K * T);
        for (let j = 0; j < T; j++) for (let k = 0; k < K; k++) {
          let s = 0;
          for (let n = 0; n < N; n++) s += wq[n * K + k]! * dy[j * N + n]!;
          ref[j * K + k] = s;
        }
        const out = await run(device, 'input_grad', [{ data: w, shape: [K, N], type }, { data: dy, shape: [N, T] }], [kind]);
        t.same(out.shape, [K, T, 1, 1]);
        const e = nmse(out.data, ref);
        t.ok(e <= tol, `INPUT_GRAD(type_w=${type},scratch=${scratch},in=${K},out=${N},t=${T}) nmse ${e.toExponential(2)} <= ${tol}`);
      }
    }
  });

  t.test(`rms_norm on ${device}`, async (t) => {
    for (const [E, T] of [[7, 3], [64, 5], [896, 17]] as const) {
      const x = randomArray(E * T, E + T, 3);
      const eps = 1e-6;
      const out = await run(device, 'rms_norm', [{ data: x, shape: [E, T] }], [eps]);
      const ref = new Float64Array(E * T);
      for (let r = 0; r < T; r++) {
        let ss = 0;
        for (let i = 0; i < E; i++) ss += x[r * E + i]! ** 2;
        const s = 1 / Math.sqrt(ss / E + eps);
        for (let i = 0; i < E; i++) ref[r * E + i] = x[r * E + i]! * s;
      }
      const e = nmse(out.data, ref);
      t.ok(e <= 1e-10, `RMS_NORM(ne=[${E},${T}]) nmse ${e.toExponential(2)}`);
    }
  });

  t.test(`swiglu on ${device}`, async (t) => {
    const n = 13 * 11;
    const g = randomArray(n, 5, 4), u = randomArray(n, 6, 2);
    const out = await run(device, 'swiglu', [{ data: g, shape: [13, 11] }, { data: u, shape: [13, 11] }]);
    const ref = Array.from(g, (x, i) => (x / (1 + Math.exp(-x))) * u[i]!);
    const e = nmse(out.data, ref);
    t.ok(e <= 1e-10, `SWIGLU nmse ${e.toExponential(2)}`);
  });

  t.test(`rope on ${device}`, async (t) => {
    for (const mode of [0, 2]) {
      const hd = 16, H = 3, T = 5, base = 1e6;
      const x = randomArray(hd * H * T, 40 + mode);
      const pos = Int32Array.from([0, 1, 7, 33, 1000]);
      const out = await run(device, 'rope', [{ data: x, shape: [hd, H, T] }, { data: pos, shape: [T], type: 'i32' }], [hd, mode, base]);
      const ref = new Float64Array(x.length);
      for (let tt = 0; tt < T; tt++) for (let h = 0; h < H; h++) {
        const o = (tt * H + h) * hd;
        for (let i = 0; i < hd / 2; i++) {
          const theta = pos[tt]! * base ** ((-2 * i) / hd);
          const c = Math.cos(theta), s = Math.sin(theta);
          // NEOX rotates pairs (i, i + hd/2); normal mode rotates adjacent pairs (2i, 2i + 1).
          const [a, b] = mode === 2 ? [o + i, o + i + hd / 2] : [o + 2 * i, o + 2 * i + 1];
          ref[a] = x[a]! * c - x[b]! * s;
          ref[b] = x[a]! * s + x[b]! * c;
        }
      }
      const e = nmse(out.data, ref);
      t.ok(e <= 1e-9, `ROPE(mode=${mode},hd=${hd},pos up to 1000) nmse ${e.toExponential(2)}`);
    }
  });

  t.test(`flash attention on ${device}`, async (t) => {
    for (const [hd, Tq, Tk, H, Hkv, S] of [[64, 1, 256, 4, 2, 1], [64, 7, 256, 4, 2, 1], [128, 1, 512, 8, 2, 3], [128, 5, 256, 2, 1, 2]] as const) {
      const seed = hd + Tq * 3 + Tk + H;
      const q = randomArray(hd * Tq * H * S, seed);
      const k = randomArray(hd * Tk * Hkv * S, seed + 1).map(toHalf);
      const v = randomArray(hd * Tk * Hkv * S, seed + 2).map(toHalf);
      // Causal mask within each stream: query j sees keys 0..(Tk_used - Tq + j); the rest of the cells are -inf.
      const used = Math.min(Tk, 37 + Tq);
      const mask = new Float32Array(Tk * Tq * S);
      for (let s = 0; s < S; s++) for (let j = 0; j < Tq; j++) for (let c = 0; c < Tk; c++) {
        mask[(s * Tq + j) * Tk + c] = c <= used - Tq + j ? 0 : -Infinity;
      }
      const scale = 1 / Math.sqrt(hd);
      const out = await run(device, 'attn', [
        { data: q, shape: [hd, Tq, H, S] }, { data: k, shape: [hd, Tk, Hkv, S], type: 'f16' },
        { data: v, shape: [hd, Tk, Hkv, S], type: 'f16' }, { data: mask, shape: [Tk, Tq, 1, S], type: 'f16' },
      ], [scale]);
      // ggml's output layout: [hd, H, Tq, S]
      const ref = new Float64Array(hd * H * Tq * S);
      for (let s = 0; s < S; s++) for (let h = 0; h < H; h++) for (let j = 0; j < Tq; j++) {
        const hk = Math.floor(h / (H / Hkv));
        const qo = ((s * H + h) * Tq + j) * hd;
        const w = new Float64Array(Tk);
        let mx = -Infinity;
        for (let c = 0; c < Tk; c++) {
          const m = mask[(s * Tq + j) * Tk + c]!;
          if (m === -Infinity) { w[c] = -Infinity; continue; }
          let d = 0;
          const ko = ((s * Hkv + hk) * Tk + c) * hd;
          for (let i = 0; i < hd; i++) d += q[qo + i]! * k[ko + i]!;
          w[c] = d * scale + m;
          mx = Math.max(mx, w[c]!);
        }
        let sum = 0;
        for (let c = 0; c < Tk; c++) { w[c] = w[c] === -Infinity ? 0 : Math.exp(w[c]! - mx); sum += w[c]!; }
        const oo = ((s * Tq + j) * H + h) * hd;
        for (let i = 0; i < hd; i++) {
          let acc = 0;
          for (let c = 0; c < Tk; c++) if (w[c]) acc += w[c]! * v[((s * Hkv + hk) * Tk + c) * hd + i]!;
          ref[oo + i] = acc / sum;
        }
      }
      const e = nmse(out.data, ref);
      t.ok(e <= 5e-4, `FLASH_ATTN_EXT(hd=${hd},tq=${Tq},tk=${Tk},h=${H},hkv=${Hkv},s=${S}) nmse ${e.toExponential(2)}`);
    }
  });
}

t.test('bad op requests fail with codes, never abort', async (t) => {
  await t.rejects(run('cpu', 'mul_mat', [{ data: new Float32Array(6), shape: [3, 2] }, { data: new Float32Array(8), shape: [4, 2] }]), { code: 'ERR_INVALID_ARG' });
  await t.rejects(run('cpu', 'mul_mat', [{ data: new Float32Array(64), shape: [32, 2], type: 'q4_K' }, { data: new Float32Array(64), shape: [32, 2] }]), { code: 'ERR_INVALID_ARG' });
  await t.rejects(run('cpu', 'rms_norm', [{ data: new Float32Array(5), shape: [3, 2] }]), { code: 'ERR_INVALID_ARG' });
  await t.rejects(run('cpu', 'nope', []), { code: 'ERR_INVALID_ARG' });
  await t.rejects(run('cpu', 'mul_mat', [{ data: new Float32Array(4), shape: [4], type: 'q5_1' }, { data: new Float32Array(4), shape: [4] }]), { code: 'ERR_UNSUPPORTED_TYPE' });
});
