/**
 * A step's metrics from totals that add up across the ranks of a data-parallel run: one process computes them
 * from its own totals, several combine every rank's (`allGather`, the same array on every rank) into the metrics
 * of the whole step. Token-weighted ratios, the reward's mean and standard deviation, extremes and throughput
 * come from the summed totals; the other metrics are per-sample means over equal shares, so their mean over
 * ranks is the whole step's (up to samples a reward left out, such as gold errors).
 */
import type { Rollout } from './rollout.js';
import type { Metrics } from './metrics.js';

/** The sampler's log-probs against the training pass's, over the tokens that train. */
export interface SamplingTotals { n: number; sumDiff: number; maxDiff: number; sumRatio: number; minRatio: number; maxRatio: number }

export function samplingTotals(rollouts: readonly Rollout[], trainLp: readonly (Float32Array | undefined)[], include: readonly boolean[]): SamplingTotals {
  // minRatio starts at the largest float (not Infinity, which JSON cannot carry between ranks).
  const t: SamplingTotals = { n: 0, sumDiff: 0, maxDiff: 0, sumRatio: 0, minRatio: Number.MAX_VALUE, maxRatio: 0 };
  rollouts.forEach((r, i) => {
    const lp = trainLp[i];
    if (!include[i] || !lp) return;
    const s = r.completion.logprobs;
    for (let k = 0; k < lp.length; k++) {
      const d = lp[k]! - s[k]!;
      const ratio = Math.exp(d);
      t.sumDiff += Math.abs(d);
      t.maxDiff = Math.max(t.maxDiff, Math.abs(d));
      t.sumRatio += ratio;
      t.minRatio = Math.min(t.minRatio, ratio);
      t.maxRatio = Math.max(t.maxRatio, ratio);
      t.n++;
    }
  });
  return t;
}

export function samplingMetricsFrom(t: SamplingTotals): Metrics {
  if (t.n === 0) return {};
  return {
    'sampling/sampling_logp_difference/mean': t.sumDiff / t.n,
    'sampling/sampling_logp_difference/max': t.maxDiff,
    'sampling/importance_sampling_ratio/min': t.minRatio,
    'sampling/importance_sampling_ratio/mean': t.sumRatio / t.n,
    'sampling/importance_sampling_ratio/max': t.maxRatio,
  };
}

/** One rank's share of a step. */
export interface RankStepTotals {
  /** This rank's metrics, computed from its totals alone. */
  metrics: Metrics;
  /** Token-weighted sums of the loss's per-token outputs, and the tokens they cover. */
  tok: { kl: number; clipLow: number; clipHigh: number; clipRegion: number; n: number };
  /** The sum, sum of squares and count of the rewards (samples with a reward). */
  rewards: { sum: number; sq: number; n: number };
  /** This rank's part of the step's loss (already normalized by the whole step's counts). */
  loss: number;
  stepTokens: number;
  /** Tokens this rank has processed since the run began. */
  numTokens: number;
  stepTime: number;
  sampling: SamplingTotals;
  /** Whether a KL term is trained (beta > 0). */
  kl: boolean;
}

/** The token-weighted and summed metrics of totals (one rank's, or all ranks' added up); the rewards' are the caller's. */
function totalsMetrics(t: Omit<RankStepTotals, 'metrics' | 'kl'>, kl: boolean): Metrics {
  const out: Metrics = {};
  if (kl && t.tok.n > 0) out['kl'] = t.tok.kl / t.tok.n;
  out['clip_ratio/low_mean'] = t.tok.n ? t.tok.clipLow / t.tok.n : 0;
  out['clip_ratio/high_mean'] = t.tok.n ? t.tok.clipHigh / t.tok.n : 0;
  out['clip_ratio/region_mean'] = t.tok.n ? t.tok.clipRegion / t.tok.n : 0;
  out['loss'] = t.loss;
  out['num_tokens'] = t.numTokens;
  out['step_time'] = t.stepTime;
  out['tokens_per_second'] = t.stepTime > 0 ? t.stepTokens / t.stepTime : 0;
  Object.assign(out, samplingMetricsFrom(t.sampling));
  return out;
}

/** One process's step metrics: its own metrics with the totals' metrics over them. */
export function stepMetrics(t: RankStepTotals): Metrics {
  return { ...t.metrics, ...totalsMetrics(t, t.kl) };
}

/** The whole step's metrics from every rank's totals (in rank order). */
export function combineRankMetrics(all: readonly RankStepTotals[]): Metrics {
  const keys = [...new Set(all.flatMap((r) => Object.keys(r.metrics)))];
  const out: Metrics = {};
  for (const k of keys) {
    const vs = all.map((r) => r.metrics[k]).filter((v): v is number => v !== undefined);
    if (k === 'completions/min_length') out[k] = Math.min(...vs);
    else if (k === 'completions/max_length') out[k] = Math.max(...vs);
    else if (k.startsWith('time/')) out[k] = Math.max(...vs);   // the slowest rank sets the step's pace
    else out[k] = vs.reduce((a, b) => a + b, 0) / vs.length;
  }
  const sum = (f: (r: RankStepTotals) => number) => all.reduce((a, r) => a + f(r), 0);
  const totals = {
    tok: { kl: sum((r) => r.tok.kl), clipLow: sum((r) => r.tok.clipLow), clipHigh: sum((r) => r.tok.clipHigh), clipRegion: sum((r) => r.tok.clipRegion), n: sum((r) => r.tok.n) },
    rewards: { sum: sum((r) => r.rewards.sum), sq: sum((r) => r.rewards.sq), n: sum((r) => r.rewards.n) },
    loss: sum((r) => r.loss),
    stepTokens: sum((r) => r.stepTokens),
    numTokens: sum((r) => r.numTokens),
    stepTime: Math.max(...all.map((r) => r.stepTime)),
    sampling: {
      n: sum((r) => r.sampling.n), sumDiff: sum((r) => r.sampling.sumDiff), sumRatio: sum((r) => r.sampling.sumRatio),
      maxDiff: Math.max(...all.map((r) => r.sampling.maxDiff)), minRatio: Math.min(...all.map((r) => r.sampling.minRatio)),
      maxRatio: Math.max(...all.map((r) => r.sampling.maxRatio)),
    },
  };
  // The rewards' population standard deviation over the whole step, from the summed moments.
  const m = totals.rewards.n ? totals.rewards.sum / totals.rewards.n : 0;
  out['reward'] = m;
  out['reward_std'] = totals.rewards.n ? Math.sqrt(Math.max(0, totals.rewards.sq / totals.rewards.n - m * m)) : 0;
  return { ...out, ...totalsMetrics(totals, all.some((r) => r.kl)) };
}
