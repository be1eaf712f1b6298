/**
 * Learning-rate schedules against transformers' lr_lambda functions written out (get_constant_schedule_with_warmup,
 * get_linear_schedule_with_warmup, get_cosine_schedule_with_warmup with num_cycles 0.5), step by step.
 */
import t from 'tap';
import { learningRateAt, type LrSchedulerType } from '../../lib/grpo/schedule.js';

// transformers/optimization.py, transcribed: the multiplier of the base learning rate at 0-based step s.
function hfLambda(type: LrSchedulerType, s: number, W: number, N: number): number {
  if (s < W) return s / Math.max(1, W);
  if (type === 'constant') return 1;
  if (type === 'linear') return Math.max(0, (N - s) / Math.max(1, N - W));
  const progress = (s - W) / Math.max(1, N - W);
  return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * 0.5 * 2 * progress)));
}

t.test('each schedule, every step of short and long runs', async (t) => {
  for (const type of ['constant', 'linear', 'cosine'] as const) {
    for (const [W, N] of [[0, 10], [3, 10], [10, 10], [5, 1000], [0, 1]]) {
      let worst = 0;
      for (let s = 0; s <= N!; s++) {
        const got = learningRateAt(s, { learningRate: 2e-5, warmupSteps: W!, lrSchedulerType: type, totalSteps: N! });
        worst = Math.max(worst, Math.abs(got - 2e-5 * hfLambda(type, s, W!, N!)));
      }
      t.ok(worst <= 1e-20, `${type} W=${W} N=${N}: max |diff| ${worst}`);
    }
  }
});

t.test('landmarks', async (t) => {
  const o = { learningRate: 1, warmupSteps: 4, totalSteps: 12 };
  t.equal(learningRateAt(0, { ...o, lrSchedulerType: 'linear' }), 0, 'warmup starts at 0 (step 0 trains at lr 0, as transformers)');
  t.equal(learningRateAt(2, { ...o, lrSchedulerType: 'cosine' }), 0.5, 'half way through warmup');
  t.equal(learningRateAt(4, { ...o, lrSchedulerType: 'linear' }), 1, 'peak after warmup');
  t.equal(learningRateAt(8, { ...o, lrSchedulerType: 'linear' }), 0.5, 'linear: half way down');
  t.ok(Math.abs(learningRateAt(8, { ...o, lrSchedulerType: 'cosine' }) - 0.5) < 1e-15, 'cosine: half way down');
  t.equal(learningRateAt(12, { ...o, lrSchedulerType: 'linear' }), 0, 'linear: 0 at the end');
  t.equal(learningRateAt(20, { ...o, lrSchedulerType: 'cosine' }), 0, 'cosine past the end: stays at 0 (transformers would climb back to 1 at 2N - W)');
  t.equal(learningRateAt(13, { ...o, lrSchedulerType: 'linear' }), 0, 'linear past the end: 0, never negative');
  t.equal(learningRateAt(100, { ...o, lrSchedulerType: 'constant' }), 1);
  t.equal(learningRateAt(0, { ...o, warmupSteps: 0, lrSchedulerType: 'constant' }), 1, 'no warmup: full rate at step 0');
});

t.test('input validation', async (t) => {
  const o = { learningRate: 1e-5, warmupSteps: 0, totalSteps: 10, lrSchedulerType: 'linear' as const };
  t.throws(() => learningRateAt(-1, o), { code: 'ERR_INVALID_ARG' });
  t.throws(() => learningRateAt(1.5, o), { code: 'ERR_INVALID_ARG' });
  t.throws(() => learningRateAt(0, { ...o, lrSchedulerType: 'step' as LrSchedulerType }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => learningRateAt(0, { ...o, warmupSteps: -1 }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => learningRateAt(0, { ...o, learningRate: Number.NaN }), { code: 'ERR_INVALID_ARG' });
});
