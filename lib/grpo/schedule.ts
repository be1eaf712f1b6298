/**
 * Learning-rate schedules with linear warmup, as transformers' get_constant_schedule_with_warmup,
 * get_linear_schedule_with_warmup and get_cosine_schedule_with_warmup (num_cycles 0.5). Step s is 0-based (the
 * s-th optimizer step uses learningRateAt(s)), W = warmupSteps, N = totalSteps:
 *
 *   s < W:        lr * s / max(1, W)                      warmup from 0 (step 0 trains at lr 0, as transformers)
 *   constant:     lr
 *   linear:       lr * max(0, (N - s) / max(1, N - W))
 *   cosine:       lr * max(0, 0.5 (1 + cos(pi p))),        p = min(1, (s - W) / max(1, N - W))
 *
 * Up to step N these are transformers' values exactly; past N (a run extended after it was scheduled) the rate
 * stays at its end value, where transformers' cosine would climb back up.
 */
import { Sqlr1Error } from '../errors.js';

export type LrSchedulerType = 'constant' | 'linear' | 'cosine';

export interface ScheduleOptions {
  learningRate: number;
  warmupSteps: number;
  lrSchedulerType: LrSchedulerType;
  /** Optimizer steps of the whole run. */
  totalSteps: number;
}

export function learningRateAt(step: number, o: ScheduleOptions): number {
  if (!Number.isInteger(step) || step < 0) throw new Sqlr1Error('ERR_INVALID_ARG', `learningRateAt: step must be an integer >= 0, received ${String(step)}`);
  const { learningRate: lr, warmupSteps: W, totalSteps: N, lrSchedulerType: type } = o;
  if (typeof lr !== 'number' || !Number.isFinite(lr) || lr < 0) throw new Sqlr1Error('ERR_INVALID_ARG', `learningRateAt: learningRate must be a finite number >= 0, received ${String(lr)}`);
  if (!Number.isInteger(W) || W < 0) throw new Sqlr1Error('ERR_INVALID_ARG', `learningRateAt: warmupSteps must be an integer >= 0, received ${String(W)}`);
  if (!Number.isInteger(N) || N < 0) throw new Sqlr1Error('ERR_INVALID_ARG', `learningRateAt: totalSteps must be an integer >= 0, received ${String(N)}`);
  if (step < W) return (lr * step) / Math.max(1, W);
  switch (type) {
    case 'constant':
      return lr;
    case 'linear':
      return lr * Math.max(0, (N - step) / Math.max(1, N - W));
    case 'cosine': {
      const p = Math.min(1, (step - W) / Math.max(1, N - W));
      return lr * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * p)));
    }
    default:
      throw new Sqlr1Error('ERR_INVALID_ARG', `learningRateAt: lrSchedulerType must be 'constant', 'linear' or 'cosine', received ${String(type)}`);
  }
}
