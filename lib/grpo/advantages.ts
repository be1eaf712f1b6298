/**
 * Group-relative advantages (DeepSeekMath's GRPO; TRL's GRPOTrainer._generate_and_score_completions).
 *
 * The batch is `rewards.length / groupSize` groups of `groupSize` consecutive samples (one prompt's
 * completions). For sample j of group g with reward r_j:
 *   A_j = r_j - mean_g                         scale 'none' (Dr. GRPO: no division)
 *   A_j = (r_j - mean_g) / (std_g + 1e-4)      scale 'group'
 *   A_j = (r_j - mean_g) / (std_B + 1e-4)      scale 'batch' (the whole batch's std, the group's mean)
 *
 * std is the sample standard deviation (divisor n - 1), as TRL's torch.std (unbiased by default): the same
 * rewards give the same advantages as TRL, so learning rates and clip ranges carry over from TRL recipes.
 *
 * A null reward (the sample's gold SQL failed to execute: nothing to compare against) is left out of its group's
 * mean and std and of the batch std, gets advantage 0 and valid 0: the trainer gives it no gradient. A group
 * whose valid rewards are all equal (std <= 1e-8, torch.isclose's absolute tolerance against 0), or that has
 * fewer than two valid rewards, carries no signal: its advantages are exactly 0 and it counts in `zeroStdGroups`.
 * `fracZeroStd` (the `frac_reward_zero_std` metric) is zeroStdGroups over the groups with at least one valid
 * sample. Unlike TRL, under scale 'batch' the count still looks at each group's own spread (the groups that
 * give no gradient), not at the batch std.
 */
import { Sqlr1Error } from '../errors.js';

export type ScaleRewards = 'group' | 'batch' | 'none';

/** Added to the std before dividing (TRL's 1e-4): bounds advantages when a group's rewards barely differ. */
export const ADVANTAGE_STD_EPS = 1e-4;

/** A std at or below this is zero (torch.isclose(std, 0)'s default atol). */
export const ZERO_STD_TOL = 1e-8;

export interface AdvantageResult {
  /** One per sample; 0 for null rewards and for zero-std groups. */
  advantages: Float64Array;
  /** 1 where the reward is a number, 0 where it is null (no gradient). */
  valid: Uint8Array;
  /** Groups with at least one valid sample whose valid rewards are all equal (or that have only one). */
  zeroStdGroups: number;
  /** zeroStdGroups / groups with at least one valid sample (0 when there are none): `frac_reward_zero_std`. */
  fracZeroStd: number;
  /** Each group's mean of valid rewards (NaN for a group without one). */
  groupMean: Float64Array;
  /** Each group's sample std of valid rewards (0 with fewer than two, NaN without any). */
  groupStd: Float64Array;
}

function sampleStd(xs: readonly number[], mean: number): number {
  if (xs.length < 2) return 0;
  let s = 0;
  for (const x of xs) s += (x - mean) ** 2;
  return Math.sqrt(s / (xs.length - 1));
}

export function computeAdvantages(rewards: readonly (number | null)[], groupSize: number, scale: ScaleRewards): AdvantageResult {
  if (!Array.isArray(rewards) && !ArrayBuffer.isView(rewards)) {
    throw new Sqlr1Error('ERR_INVALID_ARG', `computeAdvantages: rewards must be an array of numbers or nulls, received ${typeof rewards}`);
  }
  if (!Number.isInteger(groupSize) || groupSize < 1) {
    throw new Sqlr1Error('ERR_INVALID_ARG', `computeAdvantages: groupSize must be a positive integer, received ${String(groupSize)}`);
  }
  if (rewards.length % groupSize !== 0) {
    throw new Sqlr1Error('ERR_INVALID_ARG', `computeAdvantages: ${rewards.length} rewards do not split into groups of ${groupSize}`);
  }
  if (scale !== 'group' && scale !== 'batch' && scale !== 'none') {
    throw new Sqlr1Error('ERR_INVALID_ARG', `computeAdvantages: scale must be 'group', 'batch' or 'none', received ${String(scale)}`);
  }
  rewards.forEach((r, i) => {
    if (r !== null && (typeof r !== 'number' || !Number.isFinite(r))) {
      throw new Sqlr1Error('ERR_INVALID_ARG', `computeAdvantages: reward ${i} must be a finite number or null, received ${String(r)}`);
    }
  });

  const n = rewards.length, groups = n / groupSize;
  const advantages = new Float64Array(n);
  const valid = new Uint8Array(n);
  const groupMean = new Float64Array(groups).fill(Number.NaN);
  const groupStd = new Float64Array(groups).fill(Number.NaN);
  const all: number[] = [];
  for (let i = 0; i < n; i++) {
    const r = rewards[i];
    if (r !== null && r !== undefined) { valid[i] = 1; all.push(r); }
  }
  const batchMean = all.reduce((a, b) => a + b, 0) / Math.max(all.length, 1);
  const batchStd = sampleStd(all, batchMean);

  let zeroStdGroups = 0, groupsWithValid = 0;
  for (let g = 0; g < groups; g++) {
    const xs: number[] = [];
    for (let j = g * groupSize; j < (g + 1) * groupSize; j++) if (valid[j]) xs.push(rewards[j] as number);
    if (xs.length === 0) continue;
    groupsWithValid++;
    const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
    const std = sampleStd(xs, mean);
    groupMean[g] = mean;
    groupStd[g] = std;
    if (std <= ZERO_STD_TOL) { zeroStdGroups++; continue; }            // advantages stay 0
    const divisor = scale === 'group' ? std + ADVANTAGE_STD_EPS : scale === 'batch' ? batchStd + ADVANTAGE_STD_EPS : 1;
    for (let j = g * groupSize; j < (g + 1) * groupSize; j++) if (valid[j]) advantages[j] = ((rewards[j] as number) - mean) / divisor;
  }
  return { advantages, valid, zeroStdGroups, fracZeroStd: groupsWithValid === 0 ? 0 : zeroStdGroups / groupsWithValid, groupMean, groupStd };
}
