/**
 * The GRPO loss composed from tensor ops: values and metrics against a float64 re-implementation of TRL's
 * compute_loss, d loss / d logp against central finite differences and against the closed form, on every
 * side of the clip boundary (ratios inside, above 1 + epsHigh and below 1 - epsLow, with positive, negative
 * and zero advantages), with and without the KL term (k3, and k1 = logp - ref), for the four aggregations. The
 * float64 reference is test/grpo/fixtures/loss-ref.ts; test/grpo/loss-types.test.ts adds random inputs,
 * whole-batch normalizers, micro-batch accumulation and importance-sampling weights.
 *
 * Closed form. Per token (s, i) with mask m, ratio r = exp(logp - old), advantage A and d = ref - logp:
 *   ptl = -min(r A, clip(r) A) + beta (exp(d) - d - 1)
 *   d ptl / d logp = -A r * u + beta (1 - exp(d)),   u = 0 when the clipped term is the minimum and constant
 *   there (A > 0 and r > 1 + epsHigh, or A < 0 and r < 1 - epsLow), else u = 1 (inside the range both terms
 *   move with r; outside on the other side the unclipped term is the smaller one).
 * The loss is a weighted sum of ptl with weights w = m / (N max(M_s, 1)) (grpo, M_s the sequence's token
 * count), m / max(M, 1) (bnpo and dapo, M all tokens) or m / (N maxLen) (dr_grpo), so
 * d loss / d logp = w d ptl / d logp. With k1 the KL term is beta (logp - ref), its derivative beta.
 */
import t from 'tap';
import { Tensor, backward, grpoLoss, type GrpoLossType, type KlEstimator } from '../../lib/train/index.js';
import { testDevices } from '../helpers/native.js';
import { gradCheck, uniform, worstRatio } from './fixtures/ref.js';
import { grpoLossRef } from '../grpo/fixtures/loss-ref.js';

const devices = testDevices();
const N = 5, T = 7;
const EPS_LOW = 0.2, EPS_HIGH = 0.28;

interface Batch {
  seed: number;
  logp: Float32Array; old: Float32Array; ref: Float32Array; adv: Float32Array; mask: Float32Array;
}

/**
 * Ratios cycle through regions: inside, above 1 + epsHigh, below 1 - epsLow, and next to the bounds (1.19/1.21,
 * 1.27/1.29, 0.79/0.81). With the +-0.2% jitter every ratio stays >= 0.6% from a bound, more than the 0.26% a
 * finite-difference step (1e-3 * |logp| <= 2.6e-3 in log space) moves it, so the differences never straddle a kink.
 */
function makeBatch(seed: number): Batch {
  const u = uniform(N * T * 3, seed, 0, 1);
  const ratios = [0.9, 1.05, 1.45, 1.6, 0.6, 0.7, 1.19, 1.21, 1.29, 1.27, 0.79, 0.81, 1.0];
  const logp = new Float32Array(N * T), old = new Float32Array(N * T), ref = new Float32Array(N * T);
  for (let i = 0; i < N * T; i++) {
    logp[i] = -0.05 - 2.5 * u[i]!;
    const r = ratios[(i + seed) % ratios.length]! * (1 + 0.004 * (u[N * T + i]! - 0.5));
    old[i] = logp[i]! - Math.log(r);
    ref[i] = logp[i]! + (u[2 * N * T + i]! - 0.5);
  }
  const adv = Float32Array.from([1.3, -0.7, 0.0, 0.4, -1.9]);
  const lens = [7, 3, 5, 1, 6];
  const mask = new Float32Array(N * T);
  for (let s = 0; s < N; s++) for (let i = 0; i < lens[s]!; i++) mask[s * T + i] = 1;
  return { seed, logp, old, ref, adv, mask };
}

function ref64(b: Batch, beta: number, lossType: GrpoLossType, klEstimator: KlEstimator = 'k3') {
  return grpoLossRef({
    N, T, logp: b.logp, old: b.old, ref: b.ref, adv: b.adv, mask: b.mask, epsLow: EPS_LOW, epsHigh: EPS_HIGH, beta, lossType, klEstimator,
  });
}

function build(b: Batch, logp: Tensor, beta: number, lossType: GrpoLossType, klEstimator: KlEstimator = 'k3') {
  return grpoLoss({
    logp, oldLogp: Tensor.constant(b.old, [N, T]), refLogp: Tensor.constant(b.ref, [N, T]),
    advantages: Tensor.constant(b.adv, [N]), mask: Tensor.constant(b.mask, [N, T]),
    epsLow: EPS_LOW, epsHigh: EPS_HIGH, beta, lossType, klEstimator,
  });
}

const configs: Array<[GrpoLossType, number, KlEstimator]> = [
  ['grpo', 0, 'k3'], ['grpo', 0.04, 'k3'], ['bnpo', 0, 'k3'], ['bnpo', 0.04, 'k3'], ['dr_grpo', 0, 'k3'], ['dr_grpo', 0.04, 'k3'],
  ['dapo', 0, 'k3'], ['dapo', 0.04, 'k3'], ['grpo', 0.04, 'k1'], ['dapo', 0.04, 'k1'],
];

for (const device of devices) {
  t.test(`GRPO loss on ${device}: values, metrics and the closed-form gradient`, async (t) => {
    for (const [lossType, beta, kl] of configs) {
      const b = makeBatch(beta === 0 ? 17 : 21);
      const logp = Tensor.constant(b.logp, [N, T], { requiresGrad: true });
      const g = build(b, logp, beta, lossType, kl);
      const r = await backward(g.loss, { device, outputs: [g.kl!, g.clipLow, g.clipHigh, g.clipRegion] });
      const want = ref64(b, beta, lossType, kl);
      const tag = `${lossType} beta=${beta} ${kl} (seed ${b.seed})`;
      // float32: exp and products round at ~1e-7 relative; the reduction is over 35 terms.
      t.ok(Math.abs(r.loss - want.loss) <= 1e-6 + 1e-5 * Math.abs(want.loss), `${tag}: loss ${r.loss} vs ${want.loss}`);
      t.ok(Math.abs(r.values.get(g.kl!)![0]! - want.kl) <= 1e-6, `${tag}: kl ${r.values.get(g.kl!)![0]} vs ${want.kl}`);
      t.equal(r.values.get(g.clipLow)![0], Math.fround(want.clipLow), `${tag}: clip_ratio/low_mean ${want.clipLow}`);
      t.equal(r.values.get(g.clipHigh)![0], Math.fround(want.clipHigh), `${tag}: clip_ratio/high_mean ${want.clipHigh}`);
      t.equal(r.values.get(g.clipRegion)![0], Math.fround(want.clipRegion), `${tag}: clip_ratio/region_mean ${want.clipRegion}`);
      t.ok(want.clipLow > 0 && want.clipHigh > 0, `${tag}: the batch has clipped tokens on both sides`);
      // The analytic gradient against the closed form: float32 products of O(1) terms, ~1e-7 relative each.
      const grad = r.grads.get(logp)!;
      const worst = worstRatio(grad, want.grad, 1e-9, 2e-5);
      t.ok(worst <= 1, `${tag}: d loss / d logp matches the closed form on all ${N * T} tokens (worst ratio ${worst.toFixed(3)})`);
      t.ok(grad.every((v, k) => b.mask[k] !== 0 || v === 0), `${tag}: padded tokens get exactly 0`);
      // Two tokens spelled out: seq 0 token 0 (A = 1.3) and seq 1 token 2 (A = -0.7).
      for (const k of [0, T + 2]) {
        const A = b.adv[Math.floor(k / T)]!, rr = Math.exp(b.logp[k]! - b.old[k]!), d = b.ref[k]! - b.logp[k]!;
        const clipped = (A > 0 && rr > 1 + EPS_HIGH) || (A < 0 && rr < 1 - EPS_LOW);
        const Ms = b.mask.slice(Math.floor(k / T) * T, Math.floor(k / T) * T + T).reduce((a, v) => a + v, 0);
        const wk = lossType === 'grpo' ? 1 / (N * Ms) : lossType === 'bnpo' || lossType === 'dapo' ? 1 / b.mask.reduce((a, v) => a + v, 0) : 1 / (N * T);
        const closed = wk * ((clipped ? 0 : -A * rr) + beta * (kl === 'k1' ? 1 : 1 - Math.exp(d)));
        t.ok(Math.abs(grad[k]! - closed) <= 2e-5 * Math.abs(closed) + 1e-9, `${tag}: token ${k} (r=${rr.toFixed(3)}, A=${A}) gradient ${grad[k]} = ${closed}`);
      }
    }
  });

  t.test(`GRPO loss on ${device}: d loss / d logp against finite differences on both sides of the clip`, async (t) => {
    for (const [lossType, beta, kl] of configs) {
      const b = makeBatch(beta === 0 ? 23 : 27);
      const g = await gradCheck([{ data: b.logp, shape: [N, T] }, { data: b.old, shape: [N, T], noGrad: true }],
        ([lp]) => build(b, lp!, beta, lossType, kl).loss, 0, { device });
      t.ok(g.worst <= 1, `${lossType} beta=${beta} ${kl}: worst |analytic - fd| / tol = ${g.worst.toFixed(3)} (seed ${b.seed})${g.worst > 1 ? ` at ${g.where}` : ''}`);
      // The finite differences see the clip too: clipped tokens (gradient 0 when beta = 0) have fd ~ 0.
      if (beta === 0) {
        const want = ref64(b, beta, lossType, kl);
        const zeros = want.grad.reduce((a, v, k) => a + (v === 0 && b.mask[k] ? 1 : 0), 0);
        t.ok(zeros >= 4, `${lossType}: ${zeros} unmasked tokens sit on the clipped side`);
        t.ok(g.numeric[0]!.every((v, k) => want.grad[k] !== 0 || Math.abs(v) < 1e-3), `${lossType}: fd is ~0 exactly where the closed form says clipped`);
      }
    }
  });
}

t.test('GRPO loss: a parameter as logp receives the gradient in the store', async (t) => {
  const { ParamStore } = await import('../../lib/train/index.js');
  const store = new ParamStore({ device: 'cpu', threads: 1 });
  t.teardown(() => store.dispose());
  const b = makeBatch(5);
  const logp = store.add('logp', [N, T], b.logp);
  const g = build(b, logp, 0.04, 'grpo');
  await backward(g.loss);
  const want = ref64(b, 0.04, 'grpo');
  const worst = worstRatio(store.grad('logp')!, want.grad, 1e-9, 2e-5);
  t.ok(worst <= 1, `store gradient matches the closed form (worst ratio ${worst.toFixed(3)}, seed ${b.seed})`);
});

t.test('GRPO loss: input validation', async (t) => {
  const x = Tensor.constant(new Float32Array(N * T), [N, T]);
  const adv = Tensor.constant(new Float32Array(N), [N]);
  t.throws(() => grpoLoss({ logp: x, oldLogp: Tensor.constant(new Float32Array(T), [T]), advantages: adv, mask: x }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => grpoLoss({ logp: x, oldLogp: x, advantages: Tensor.constant(new Float32Array(T), [T]), mask: x }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => grpoLoss({ logp: x, oldLogp: x, advantages: adv, mask: x, beta: 0.1 }), { code: 'ERR_INVALID_ARG' }, 'beta without refLogp');
  t.throws(() => grpoLoss({ logp: x, oldLogp: x, advantages: adv, mask: x, lossType: 'nope' as 'grpo' }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => grpoLoss({ logp: x, oldLogp: x, advantages: adv, mask: x, epsLow: 1.5 }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => grpoLoss({ logp: x, oldLogp: x, refLogp: x, advantages: adv, mask: x, klEstimator: 'k2' as 'k1' }), { code: 'ERR_INVALID_ARG' }, 'unknown KL estimator');
  t.throws(() => grpoLoss({ logp: x, oldLogp: x, advantages: adv, mask: x, normalizer: { sequences: N - 1 } }), { code: 'ERR_INVALID_ARG' }, 'fewer batch sequences than this call has');
  t.throws(() => grpoLoss({ logp: x, oldLogp: x, advantages: adv, mask: x, normalizer: { tokens: -1 } }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => grpoLoss({ logp: x, oldLogp: x, advantages: adv, mask: x, normalizer: { microBatches: 0 } }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => grpoLoss({ logp: x, oldLogp: x, advantages: adv, mask: x, isWeights: Tensor.constant(new Float32Array(N), [N]) }), { code: 'ERR_INVALID_ARG' }, 'isWeights of the wrong shape');
});
