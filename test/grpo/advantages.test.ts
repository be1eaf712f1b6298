/**
 * Group-relative advantages against hand-computed values and a plain float64 reference on random batches, for
 * each scale mode; zero-std groups; null rewards (gold errors) excluded from the statistics with no gradient.
 */
import t from 'tap';
import { ADVANTAGE_STD_EPS, computeAdvantages, type ScaleRewards } from '../../lib/grpo/advantages.js';
import { rng } from '../helpers/native.js';

/** TRL's formula written out: group mean, torch.std (n - 1) of the group or of the batch, + 1e-4. */
function reference(rewards: readonly (number | null)[], K: number, scale: ScaleRewards): Float64Array {
  const out = new Float64Array(rewards.length);
  const vals = rewards.filter((r): r is number => r !== null);
  const std = (xs: number[]) => {
    if (xs.length < 2) return 0;
    const m = xs.reduce((a, b) => a + b, 0) / xs.length;
    return Math.sqrt(xs.reduce((a, b) => a + (b - m) * (b - m), 0) / (xs.length - 1));
  };
  const batchStd = std(vals);
  for (let g = 0; g * K < rewards.length; g++) {
    const xs = rewards.slice(g * K, g * K + K).filter((r): r is number => r !== null);
    if (xs.length < 2) continue;
    const m = xs.reduce((a, b) => a + b, 0) / xs.length;
    const s = std(xs);
    if (s <= 1e-8) continue;
    for (let j = g * K; j < g * K + K; j++) {
      const r = rewards[j];
      if (r === null || r === undefined) continue;
      out[j] = scale === 'none' ? r - m : (r - m) / ((scale === 'group' ? s : batchStd) + 1e-4);
    }
  }
  return out;
}

const close = (a: number, b: number, tol = 1e-12) => Math.abs(a - b) <= tol * Math.max(1, Math.abs(b));

t.test('hand-computed values for each scale mode', async (t) => {
  // Group [1, 0, 0, 0]: mean 0.25, sample std sqrt(0.75 / 3) = 0.5. Group [2, 0, 2, 0]: mean 1, std sqrt(4/3).
  const rewards = [1, 0, 0, 0, 2, 0, 2, 0];
  const g = computeAdvantages(rewards, 4, 'group');
  t.ok(close(g.advantages[0]!, 0.75 / (0.5 + 1e-4)), `group: ${g.advantages[0]} = 0.75 / 0.5001`);
  t.ok(close(g.advantages[1]!, -0.25 / (0.5 + 1e-4)), 'group: the others');
  t.ok(close(g.advantages[4]!, 1 / (Math.sqrt(4 / 3) + 1e-4)), 'group: second group uses its own std');
  t.ok(close(g.groupStd[0]!, 0.5), 'sample std (n - 1), as torch.std');
  const n = computeAdvantages(rewards, 4, 'none');
  t.same([...n.advantages], [0.75, -0.25, -0.25, -0.25, 1, -1, 1, -1], 'none: r - group mean');
  // Batch: mean 0.625, sum of squared deviations 1 + 4 + 4 - 8 x 0.625^2 = 5.875, std sqrt(5.875 / 7).
  const b = computeAdvantages(rewards, 4, 'batch');
  const sB = Math.sqrt(5.875 / 7);
  t.ok(close(b.advantages[0]!, 0.75 / (sB + 1e-4)), 'batch: group mean, batch std');
  t.ok(close(b.advantages[6]!, 1 / (sB + 1e-4)), 'batch: the same divisor for every group');
  t.equal(ADVANTAGE_STD_EPS, 1e-4);
  t.ok(g.valid.every((v) => v === 1));
  t.equal(g.zeroStdGroups, 0);
});

t.test('random batches against the float64 reference', async (t) => {
  for (const seed of [1, 2, 3, 4, 5, 6]) {
    const r = rng(seed);
    const K = 2 + (seed % 7), P = 3 + seed;
    const rewards = Array.from({ length: K * P }, () => {
      const u = r();
      if (u < -0.8) return null;                                     // ~10% gold errors
      if (seed % 2 === 0) return Math.round(u * 3) / 2;               // discrete rewards: ties and equal groups
      return u * 2.5;
    });
    for (const scale of ['group', 'batch', 'none'] as const) {
      const got = computeAdvantages(rewards, K, scale);
      const want = reference(rewards, K, scale);
      const worst = Math.max(...[...got.advantages].map((v, i) => Math.abs(v - want[i]!)));
      t.ok(worst <= 1e-12, `seed ${seed} K ${K} ${scale}: max |diff| ${worst.toExponential(2)}`);
      t.same([...got.valid], rewards.map((x) => (x === null ? 0 : 1)), `seed ${seed}: valid marks the numbers`);
      rewards.forEach((x, i) => { if (x === null && got.advantages[i] !== 0) t.fail(`seed ${seed}: null reward ${i} has advantage ${got.advantages[i]}`); });
    }
    const g = computeAdvantages(rewards, K, 'group');
    // Per group, scaled advantages sum to 0 (the mean is subtracted) and have sample std std/(std+eps) < 1.
    for (let k = 0; k < P; k++) {
      const a = [...g.advantages.slice(k * K, k * K + K)].filter((_, j) => g.valid[k * K + j]);
      if (a.length === 0) continue;
      const s = a.reduce((x, y) => x + y, 0);
      if (Math.abs(s) > 1e-9) t.fail(`seed ${seed} group ${k}: advantages sum to ${s}`);
    }
  }
});

t.test('zero-std groups: zero advantages, counted over groups with a valid sample', async (t) => {
  const rewards = [
    1, 1, 1, 1,            // all equal: zero std
    0.2, 0.2, null, 0.2,   // equal among the valid
    null, 0.5, null, null, // one valid sample: no comparison
    null, null, null, null, // all gold errors: not counted at all
    1, 0, 1, 0,            // signal
  ];
  for (const scale of ['group', 'batch', 'none'] as const) {
    const a = computeAdvantages(rewards, 4, scale);
    t.equal(a.zeroStdGroups, 3, `${scale}: three zero-std groups`);
    t.equal(a.fracZeroStd, 3 / 4, `${scale}: over the four groups with a valid sample`);
    t.ok(a.advantages.slice(0, 16).every((v) => v === 0), `${scale}: exactly 0 in those groups`);
    t.ok(a.advantages.slice(16).every((v) => v !== 0), `${scale}: the last group has a signal`);
    t.ok(Number.isNaN(a.groupMean[3]!), `${scale}: no mean for an all-null group`);
  }
  const none = computeAdvantages([null, null], 2, 'group');
  t.equal(none.fracZeroStd, 0, 'no valid group: 0, not NaN');
  t.same([...none.valid], [0, 0]);
  // Rewards that differ only by rounding (0.1 + 0.2 vs 0.3) are equal.
  const fp = computeAdvantages([0.1 + 0.2, 0.3, 0.3, 0.1 + 0.2], 4, 'group');
  t.equal(fp.zeroStdGroups, 1, 'a 1e-17 spread is zero std');
  t.ok(fp.advantages.every((v) => v === 0));
});

t.test('gold errors are excluded: a group with a null equals the group without it', async (t) => {
  const withNull = computeAdvantages([1.2, null, -0.3, 0.45, 0.1, 1.2], 3, 'group');
  const without = computeAdvantages([1.2, -0.3, 0.45, 0.1, 1.2, 1.2], 2, 'group');
  // Group 0 of withNull ([1.2, -0.3]) vs group 0 of without ([1.2, -0.3]).
  t.ok(close(withNull.advantages[0]!, without.advantages[0]!) && close(withNull.advantages[2]!, without.advantages[1]!),
    'the null changes neither mean nor std of its group');
  t.equal(withNull.advantages[1], 0);
  t.equal(withNull.valid[1], 0);
  // A null is not a zero: treating it as 0 would change the group mean.
  const asZero = computeAdvantages([1.2, 0, -0.3], 3, 'group');
  t.not(asZero.advantages[0], withNull.advantages[0], 'a gold error is not scored as reward 0');
  // Batch std leaves nulls out too.
  const b1 = computeAdvantages([1, 0, null, 0, 1, 0], 3, 'batch');
  const sd = Math.sqrt((3 * 0.4 ** 2 + 2 * 0.6 ** 2) / 4);
  t.ok(close(b1.advantages[0]!, 0.5 / (sd + 1e-4)), `batch std over the five valid rewards (${sd.toFixed(4)})`);
});

t.test('input validation', async (t) => {
  t.throws(() => computeAdvantages([1, 2, 3], 2, 'group'), { code: 'ERR_INVALID_ARG' }, 'not a multiple of the group size');
  t.throws(() => computeAdvantages([1, 2], 0, 'group'), { code: 'ERR_INVALID_ARG' });
  t.throws(() => computeAdvantages([1, Number.NaN], 2, 'group'), { code: 'ERR_INVALID_ARG' }, 'NaN is not a gold error');
  t.throws(() => computeAdvantages([1, 2], 2, 'std' as ScaleRewards), { code: 'ERR_INVALID_ARG' });
  t.throws(() => computeAdvantages([1, undefined as unknown as number], 2, 'group'), { code: 'ERR_INVALID_ARG' }, 'undefined is not null');
});
