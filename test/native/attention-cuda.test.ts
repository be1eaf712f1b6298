/**
 * The training attention kernels (native/cuda/attention.cu) against a float64 plain-loop reference of causal
 * grouped-query attention and its gradients, on the same BF16-rounded inputs: O, the log-sum-exp, dQ, dK and dV
 * (summed over each KV group). Shapes cover every head size the kernels have, sequences that end inside a 64-row tile, one
 * and several sequences, and KV groups of 1, 2 and 4. Then the same with spans (each query seeing a shared
 * prompt and its own completion, as LoraTrainer.pack lays out a group): completions and padding that start and
 * end inside tiles, different layouts per sequence, and tiles where no query sees any key.
 *
 * Tolerances (nmse): the kernels round the probabilities P and dS = P (dP - D) to BF16 for the matrix units,
 * a relative error of at most 2^-9 per element; over independent roundings that gives an nmse near
 * (2^-9)^2 / 3 = 1.3e-6 for O and dV (bound 1e-4). dS also loses digits where dP - D cancels, so dQ and dK
 * get 1e-3. The log-sum-exp sums at most nt float32 terms (relative error ~1e-7 each): bound 1e-9.
 */
import t from 'tap';
import { cudaSkipReason, testHooks, nmse, randomArray, toBf16 } from '../helpers/native.js';

interface Shape { hd: number; H: number; Hk: number; nt: number; ns: number; span?: Int32Array }

/** Whether query i of sequence sq sees key j: causal, or within its span {from, sharedEnd, ownFrom}. */
function sees(s: Shape, sq: number, i: number, j: number): boolean {
  if (j > i) return false;
  if (!s.span) return true;
  const at = 3 * (sq * s.nt + i), from = s.span[at]!, sharedEnd = s.span[at + 1]!, ownFrom = s.span[at + 2]!;
  return (j >= from && j < sharedEnd) || j >= ownFrom;
}

function reference(s: Shape, q: Float32Array, k: Float32Array, v: Float32Array, dO: Float32Array) {
  const { hd, H, Hk, nt, ns } = s, T = nt * ns, G = H / Hk, scale = 1 / Math.sqrt(hd);
  const o = new Float64Array(hd * H * T), lse = new Float64Array(H * T);
  const dq = new Float64Array(hd * H * T), dk = new Float64Array(hd * Hk * T), dv = new Float64Array(hd * Hk * T);
  const qi = (t: number, h: number) => (t * H + h) * hd, ki = (t: number, g: number) => (t * Hk + g) * hd;
  for (let sq = 0; sq < ns; sq++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / G);
      for (let i = 0; i < nt; i++) {
        const ti = sq * nt + i, S = new Float64Array(i + 1).fill(-Infinity);
        let mx = -Infinity;
        for (let j = 0; j <= i; j++) {
          if (!sees(s, sq, i, j)) continue;
          let a = 0;
          for (let e = 0; e < hd; e++) a += q[qi(ti, h) + e]! * k[ki(sq * nt + j, g) + e]!;
          S[j] = a * scale;
          mx = Math.max(mx, S[j]!);
        }
        let sum = 0;
        for (let j = 0; j <= i; j++) sum += Math.exp(S[j]! - mx);
        const L = mx + Math.log(sum);
        lse[ti * H + h] = L;
        const P = S.map((x) => Math.exp(x - L));  // 0 for unseen keys
        for (let j = 0; j <= i; j++) for (let e = 0; e < hd; e++) o[qi(ti, h) + e] += P[j]! * v[ki(sq * nt + j, g) + e]!;
        let D = 0;
        for (let e = 0; e < hd; e++) D += dO[qi(ti, h) + e]! * o[qi(ti, h) + e]!;
        for (let j = 0; j <= i; j++) {
          const tj = sq * nt + j;
          let dP = 0;
          for (let e = 0; e < hd; e++) dP += dO[qi(ti, h) + e]! * v[ki(tj, g) + e]!;
          const dS = P[j]! * (dP - D) * scale;
          for (let e = 0; e < hd; e++) {
            dq[qi(ti, h) + e] += dS * k[ki(tj, g) + e]!;
            dk[ki(tj, g) + e] += dS * q[qi(ti, h) + e]!;
            dv[ki(tj, g) + e] += P[j]! * dO[qi(ti, h) + e]!;
          }
        }
      }
    }
  }
  return { o, lse, dq, dk, dv };
}

const skip = cudaSkipReason();

t.test('attention kernels match float64 loops', { skip }, async (t) => {
  const shapes: Shape[] = [
    { hd: 16, H: 4, Hk: 4, nt: 7, ns: 3 },
    { hd: 32, H: 2, Hk: 1, nt: 64, ns: 2 },
    { hd: 64, H: 4, Hk: 2, nt: 100, ns: 2 },
    { hd: 128, H: 8, Hk: 2, nt: 193, ns: 2 },
  ];
  let seed = 11;
  for (const s of shapes) {
    const T = s.nt * s.ns, nq = s.hd * s.H * T, nk = s.hd * s.Hk * T;
    // Scores of a few units, so that the softmax is neither flat nor one-hot.
    const q = toBf16(randomArray(nq, seed++, 2)), k = toBf16(randomArray(nk, seed++, 2));
    const v = toBf16(randomArray(nk, seed++)), dout = toBf16(randomArray(nq, seed++));
    const got = testHooks('cuda').attentionCuda({ q, k, v, dout, headDim: s.hd, heads: s.H, kvHeads: s.Hk, nt: s.nt, ns: s.ns });
    const ref = reference(s, q, k, v, dout);
    const name = `hd ${s.hd}, heads ${s.H}/${s.Hk}, ${s.ns} x ${s.nt}`;
    for (const [key, bound] of [['o', 1e-4], ['lse', 1e-9], ['dq', 1e-3], ['dk', 1e-3], ['dv', 1e-4]] as const) {
      const e = nmse(got[key], ref[key]);
      t.ok(e <= bound, `${name}: ${key} nmse ${e.toExponential(2)} <= ${bound}`);
    }
  }
});

/**
 * Spans of rows laid out as LoraTrainer.pack does a group: `prefix` shared tokens (causal), then completions of
 * the given lengths (each seeing the prefix and itself), then padding (each token only itself).
 */
function groupSpans(nt: number, rows: { prefix: number; completions: number[] }[]): Int32Array {
  const span = new Int32Array(3 * nt * rows.length);
  rows.forEach(({ prefix, completions }, r) => {
    const put = (j: number, sharedEnd: number, ownFrom: number) => { span[3 * (r * nt + j) + 1] = sharedEnd; span[3 * (r * nt + j) + 2] = ownFrom; };
    for (let j = 0; j < prefix; j++) put(j, 0, 0);
    let o = prefix;
    for (const n of completions) {
      for (let m = 0; m < n; m++) put(o + m, prefix, o);
      o += n;
    }
    if (o > nt) throw new Error('layout longer than the row');
    for (let j = o; j < nt; j++) put(j, 0, j);
  });
  return span;
}

t.test('attention kernels with spans match float64 loops', { skip }, async (t) => {
  const shapes: Shape[] = [
    // Two rows of different layouts; completions start and end inside tiles; the second row ends in padding.
    { hd: 64, H: 4, Hk: 2, nt: 200, ns: 2, span: groupSpans(200, [{ prefix: 69, completions: [40, 30, 61] }, { prefix: 5, completions: [10, 64, 20] }]) },
    // Nothing shared (a one-token prompt): the completions see only themselves.
    { hd: 128, H: 8, Hk: 2, nt: 150, ns: 1, span: groupSpans(150, [{ prefix: 0, completions: [50, 50, 50] }]) },
    // The second completion's tiles skip the first's whole tiles.
    { hd: 16, H: 4, Hk: 4, nt: 330, ns: 1, span: groupSpans(330, [{ prefix: 130, completions: [140, 60] }]) },
  ];
  let seed = 51;
  for (const s of shapes) {
    const T = s.nt * s.ns, nq = s.hd * s.H * T, nk = s.hd * s.Hk * T;
    const q = toBf16(randomArray(nq, seed++, 2)), k = toBf16(randomArray(nk, seed++, 2));
    const v = toBf16(randomArray(nk, seed++)), dout = toBf16(randomArray(nq, seed++));
    const got = testHooks('cuda').attentionCuda({ q, k, v, dout, headDim: s.hd, heads: s.H, kvHeads: s.Hk, nt: s.nt, ns: s.ns, span: s.span! });
    const ref = reference(s, q, k, v, dout);
    const name = `spans, hd ${s.hd}, heads ${s.H}/${s.Hk}, ${s.ns} x ${s.nt}`;
    for (const [key, bound] of [['o', 1e-4], ['lse', 1e-9], ['dq', 1e-3], ['dk', 1e-3], ['dv', 1e-4]] as const) {
      const e = nmse(got[key], ref[key]);
      t.ok(e <= bound, `${name}: ${key} nmse ${e.toExponential(2)} <= ${bound}`);
    }
  }
});

// The F16 mask the training graphs' flash attention reads (attn_mask_f16_cuda): every word against `sees`.
t.test('the attention mask written on the device matches the spans', { skip }, async (t) => {
  const randomSpans = (nt: number, ns: number, seed: number): Int32Array => {
    const u = randomArray(3 * nt * ns, seed, 1).map((x) => (x + 1) / 2);  // [0, 1]
    const span = new Int32Array(3 * nt * ns);
    for (let i = 0; i < nt * ns; i++) {
      const j = i % nt, pick = (x: number, lo: number, hi: number) => Math.min(hi, lo + Math.floor(x * (hi - lo + 1)));
      const from = pick(u[3 * i]!, 0, j);
      span.set([from, pick(u[3 * i + 1]!, from, nt), pick(u[3 * i + 2]!, 0, j)], 3 * i);
    }
    return span;
  };
  const cases: { name: string; nt: number; ns: number; span?: Int32Array }[] = [
    { name: 'causal, 3 x 37', nt: 37, ns: 3 },
    { name: 'two group layouts, 2 x 200', nt: 200, ns: 2, span: groupSpans(200, [{ prefix: 69, completions: [40, 30, 61] }, { prefix: 5, completions: [10, 64, 20] }]) },
    { name: 'random spans, 2 x 97', nt: 97, ns: 2, span: randomSpans(97, 2, 71) },
    { name: 'a 512-token prompt and 8 completions of 256, 1 x 2559', nt: 2559, ns: 1, span: groupSpans(2559, [{ prefix: 511, completions: Array(8).fill(256) }]) },
  ];
  for (const c of cases) {
    const got = testHooks('cuda').attentionMaskCuda({ nt: c.nt, ns: c.ns, ...(c.span ? { span: c.span } : {}) });
    t.equal(got.length, c.nt * c.nt * c.ns, `${c.name}: nt * nt * ns words`);
    const shape: Shape = { hd: 0, H: 0, Hk: 0, nt: c.nt, ns: c.ns, ...(c.span ? { span: c.span } : {}) };
    let wrong = 0, first = '';
    for (let sq = 0; sq < c.ns; sq++) {
      for (let i = 0; i < c.nt; i++) {
        for (let j = 0; j < c.nt; j++) {
          const want = sees(shape, sq, i, j) ? 0x0000 : 0xfc00, word = got[(sq * c.nt + i) * c.nt + j]!;
          if (word !== want && wrong++ === 0) first = `: first at row ${sq}, query ${i}, key ${j}: 0x${word.toString(16)}`;
        }
      }
    }
    t.equal(wrong, 0, `${c.name}: 0 where the query sees the key, -inf elsewhere${first}`);
  }
});

t.test('attention kernels reject bad requests with typed errors', async (t) => {
  const b = testHooks('cpu');
  const ok = { q: new Float32Array(16 * 2 * 4), k: new Float32Array(16 * 4), v: new Float32Array(16 * 4), dout: new Float32Array(16 * 2 * 4) };
  t.throws(() => b.attentionCuda({ ...ok, headDim: 16, heads: 3, kvHeads: 2, nt: 4, ns: 1 }), { code: 'ERR_INVALID_ARG' }, 'heads not a multiple of kvHeads');
  t.throws(() => b.attentionCuda({ ...ok, headDim: 16, heads: 2, kvHeads: 1, nt: 5, ns: 1 }), { code: 'ERR_INVALID_ARG' }, 'arrays of the wrong size');
  t.throws(() => b.attentionCuda({ ...ok, headDim: 0, heads: 2, kvHeads: 1, nt: 4, ns: 1 }), { code: 'ERR_INVALID_ARG' }, 'a zero dimension');
  const dims = { headDim: 16, heads: 2, kvHeads: 1, nt: 4, ns: 1 };
  t.throws(() => b.attentionCuda({ ...ok, ...dims, span: new Int32Array(11) }), { code: 'ERR_INVALID_ARG' }, 'a span array of the wrong size');
  t.throws(() => b.attentionCuda({ ...ok, ...dims, span: Int32Array.from([0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0]) }), { code: 'ERR_INVALID_ARG' }, 'a token that does not see itself');
  t.throws(() => b.attentionCuda({ ...ok, ...dims, span: Int32Array.from([0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) }), { code: 'ERR_INVALID_ARG' }, 'a shared end past the sequence');
  t.throws(() => b.attentionMaskCuda({ nt: 0, ns: 1 }), { code: 'ERR_INVALID_ARG' }, 'mask: a zero dimension');
  t.throws(() => b.attentionMaskCuda({ nt: 4, ns: 1, span: Int32Array.from([0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]) }), { code: 'ERR_INVALID_ARG' }, 'mask: a token that does not see itself');
  if (!skip) {
    t.throws(() => testHooks('cuda').attentionCuda({ q: new Float32Array(24 * 2 * 4), k: new Float32Array(24 * 4), v: new Float32Array(24 * 4), dout: new Float32Array(24 * 2 * 4), headDim: 24, heads: 2, kvHeads: 1, nt: 4, ns: 1 }),
      { code: 'ERR_UNSUPPORTED_TYPE' }, 'a head size without a kernel');
  } else {
    t.throws(() => b.attentionCuda({ ...ok, headDim: 16, heads: 2, kvHeads: 1, nt: 4, ns: 1 }), { code: 'ERR_NO_CUDA' }, 'no CUDA in this binary or machine');
  }
});
