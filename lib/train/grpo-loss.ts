/**
 * The GRPO objective (DeepSeekMath; TRL's GRPOTrainer.compute_loss) composed from tensor ops, per token i of
 * sequence s with advantage A_s and completion mask m:
 *
 *   r        = exp(logp - oldLogp)                         importance ratio
 *   surr     = -min(r A, clamp(r, 1 - epsLow, 1 + epsHigh) A)
 *   w_is     = min(exp(oldLogp - samplerLogp), cap)        optional truncated importance-sampling weight (a
 *                                                          constant the caller computes: `isWeights`)
 *   k3       = exp(ref - logp) - (ref - logp) - 1          default KL estimator (always >= 0)
 *   k1       = logp - ref                                  TRL's k1 (PPOConfig.kl_estimator): log pi / pi_ref,
 *                                                          positive where the policy gives the token more
 *                                                          probability than the reference
 *   ptl      = w_is surr + beta kl                         (the weight multiplies the surrogate only, as TRL's
 *                                                          vllm_importance_sampling_correction)
 *
 * Aggregation over the [N, T] (micro-)batch, with M_s = sum_i m_si, M = sum_s M_s; S (sequences), L (tokens)
 * and K (micro-batches) come from `normalizer` and default to this call's own N, M and 1:
 *   grpo:    sum_s (sum_i m ptl / max(M_s, 1)) / S          per-sequence mean, then mean over the batch
 *   bnpo:    sum(m ptl) / max(M, 1) / K                     token mean of this micro-batch (TRL's local-batch
 *                                                          normalizer, divided by the accumulation steps as TRL's
 *                                                          trainer does): NOT the whole batch's token mean when
 *                                                          micro-batches hold different token counts
 *   dr_grpo: sum(m ptl) / (S maxLen)
 *   dapo:    sum(m ptl) / max(L, 1)                         token mean over the whole batch
 * With S, L the whole batch's sequence and completion-token counts, the losses (and gradients) of the
 * micro-batches of a batch add up to the loss of the batch computed at once, for grpo, dr_grpo and dapo.
 *
 * d loss / d logp per token (what the trainer feeds back into the model): with W the aggregation weight of the
 * token (m / (S max(M_s, 1)) for grpo, m / (K max(M, 1)) for bnpo, m / (S maxLen) for dr_grpo, m / max(L, 1)
 * for dapo),
 *   W * (-w_is A r [unless clipped: A > 0 and r > 1 + epsHigh, or A < 0 and r < 1 - epsLow] + beta dkl),
 *   dkl = 1 - exp(ref - logp) for k3, 1 for k1.
 */
import { Sqlr1Error } from '../errors.js';
import { Tensor } from './tensor.js';

export type GrpoLossType = 'grpo' | 'bnpo' | 'dr_grpo' | 'dapo';
export type KlEstimator = 'k1' | 'k3';

/** The loss types, in documentation order. */
export const GRPO_LOSS_TYPES: readonly GrpoLossType[] = ['grpo', 'bnpo', 'dr_grpo', 'dapo'];

/**
 * Whole-batch counts for gradient accumulation: a micro-batch's loss divided by these instead of its own counts,
 * so that the micro-batches' losses and gradients add up to the whole batch's (see the header).
 */
export interface GrpoLossNormalizer {
  /** Sequences in the whole batch (grpo, dr_grpo). Default: this call's N. */
  sequences?: number;
  /** Completion tokens (mask sum) in the whole batch (dapo). Default: this call's mask sum. */
  tokens?: number;
  /** Micro-batches the batch is split into (bnpo divides its local token mean by it). Default 1. */
  microBatches?: number;
}

export interface GrpoLossOptions {
  /** Per-token log-probs of the policy, [N, T]: a parameter or a constant with requiresGrad. */
  logp: Tensor;
  /** Per-token log-probs when the completions were sampled, [N, T]. */
  oldLogp: Tensor;
  /** Per-token log-probs of the reference model, [N, T]; required when beta != 0, else used for the kl metric only. */
  refLogp?: Tensor;
  /** Per-sequence advantages, [N] or [N, 1]. */
  advantages: Tensor;
  /** 1 on completion tokens, 0 on padding, [N, T]. */
  mask: Tensor;
  /** Lower clip range: ratios below 1 - epsLow are clipped (default 0.2). */
  epsLow?: number;
  /** Upper clip range: ratios above 1 + epsHigh are clipped (default: epsLow). */
  epsHigh?: number;
  /** KL coefficient (default 0: no reference term in the loss). */
  beta?: number;
  /** Aggregation (default 'grpo'). */
  lossType?: GrpoLossType;
  /** dr_grpo's denominator length (default T, the padded completion length; TRL uses max_completion_length). */
  maxLen?: number;
  /** KL estimator per token: 'k3' (default, TRL GRPO's) or 'k1' (logp - ref). */
  klEstimator?: KlEstimator;
  /** Whole-batch counts for gradient accumulation (default: this call's own). */
  normalizer?: GrpoLossNormalizer;
  /**
   * Truncated importance-sampling weights, [N, T], constants: min(exp(oldLogp - samplerLogp), cap). They
   * multiply the surrogate term (not the KL), correcting for the sampler's distribution differing from the
   * training graph's. Default none (weight 1).
   */
  isWeights?: Tensor;
}

export interface GrpoLossTensors {
  /** The scalar loss. */
  loss: Tensor;
  /** Per-token loss before masking and aggregation, [N, T]. */
  perTokenLoss: Tensor;
  /** Masked mean of the per-token KL (the chosen estimator; TRL's `kl`) over this call's tokens; null without refLogp. */
  kl: Tensor | null;
  /** Fraction of tokens with r < 1 - epsLow and A < 0 (TRL's `clip_ratio/low_mean`). */
  clipLow: Tensor;
  /** Fraction of tokens with r > 1 + epsHigh and A > 0 (`clip_ratio/high_mean`). */
  clipHigh: Tensor;
  /** Either of the two (`clip_ratio/region_mean`). */
  clipRegion: Tensor;
}

function invalid(msg: string): never {
  throw new Sqlr1Error('ERR_INVALID_ARG', msg);
}

/** Sum of a constant's elements (the mask is always a constant: it comes from the tokenized batch). */
function sumOf(t: Tensor): number {
  if (t.data === undefined) invalid('grpoLoss: dapo needs normalizer.tokens when the mask is not a constant');
  let s = 0;
  for (const v of t.data) s += v;
  return s;
}

function same(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

export function grpoLoss(options: GrpoLossOptions): GrpoLossTensors {
  const { logp, oldLogp, refLogp, mask } = options;
  const epsLow = options.epsLow ?? 0.2;
  const epsHigh = options.epsHigh ?? epsLow;
  const beta = options.beta ?? 0;
  const lossType = options.lossType ?? 'grpo';
  for (const [k, v] of Object.entries({ logp, oldLogp, advantages: options.advantages, mask })) {
    if (!(v instanceof Tensor)) invalid(`grpoLoss: ${k} must be a Tensor`);
  }
  if (logp.shape.length !== 2) invalid(`grpoLoss: logp must be [N, T], got [${logp.shape.join(', ')}]`);
  const [N, T] = logp.shape as [number, number];
  const isWeights = options.isWeights;
  if (isWeights !== undefined && !(isWeights instanceof Tensor)) invalid('grpoLoss: isWeights must be a Tensor');
  for (const [k, v] of Object.entries({ oldLogp, mask, ...(refLogp ? { refLogp } : {}), ...(isWeights ? { isWeights } : {}) })) {
    if (!same(v.shape, logp.shape)) invalid(`grpoLoss: ${k} must have logp's shape [${N}, ${T}], got [${v.shape.join(', ')}]`);
  }
  if (refLogp !== undefined && !(refLogp instanceof Tensor)) invalid('grpoLoss: refLogp must be a Tensor');
  let advantages = options.advantages;
  if (same(advantages.shape, [N])) advantages = advantages.reshape([N, 1]);
  if (!same(advantages.shape, [N, 1])) invalid(`grpoLoss: advantages must be [${N}] or [${N}, 1], got [${advantages.shape.join(', ')}]`);
  for (const [k, v] of Object.entries({ epsLow, epsHigh, beta })) {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) invalid(`grpoLoss: ${k} must be a finite number >= 0, got ${String(v)}`);
  }
  if (epsLow >= 1) invalid(`grpoLoss: epsLow must be below 1, got ${epsLow}`);
  if (beta !== 0 && refLogp === undefined) invalid('grpoLoss: beta != 0 needs refLogp');
  if (!GRPO_LOSS_TYPES.includes(lossType)) invalid(`grpoLoss: lossType must be 'grpo', 'bnpo', 'dr_grpo' or 'dapo', got ${String(lossType)}`);
  const klEstimator = options.klEstimator ?? 'k3';
  if (klEstimator !== 'k1' && klEstimator !== 'k3') invalid(`grpoLoss: klEstimator must be 'k1' or 'k3', got ${String(klEstimator)}`);
  const maxLen = options.maxLen ?? T;
  if (!Number.isInteger(maxLen) || maxLen < 1) invalid(`grpoLoss: maxLen must be a positive integer, got ${String(maxLen)}`);
  const norm = options.normalizer ?? {};
  if (typeof norm !== 'object' || norm === null) invalid('grpoLoss: normalizer must be an object { sequences?, tokens?, microBatches? }');
  const sequences = norm.sequences ?? N;
  if (!Number.isInteger(sequences) || sequences < N) invalid(`grpoLoss: normalizer.sequences must be an integer >= this call's ${N} sequences, got ${String(norm.sequences)}`);
  const microBatches = norm.microBatches ?? 1;
  if (!Number.isInteger(microBatches) || microBatches < 1) invalid(`grpoLoss: normalizer.microBatches must be a positive integer, got ${String(norm.microBatches)}`);
  if (norm.tokens !== undefined && (typeof norm.tokens !== 'number' || !Number.isFinite(norm.tokens) || norm.tokens < 0)) {
    invalid(`grpoLoss: normalizer.tokens must be a finite number >= 0, got ${String(norm.tokens)}`);
  }

  const ratio = logp.sub(oldLogp).exp();
  const clipped = ratio.clamp(1 - epsLow, 1 + epsHigh);
  let perTokenLoss = ratio.mul(advantages).minimum(clipped.mul(advantages)).neg();
  if (isWeights) perTokenLoss = perTokenLoss.mul(isWeights);
  let klTok: Tensor | null = null;
  if (refLogp) {
    if (klEstimator === 'k1') klTok = logp.sub(refLogp);
    else {
      const d = refLogp.sub(logp);
      klTok = d.exp().sub(d).addScalar(-1);
    }
    if (beta !== 0) perTokenLoss = perTokenLoss.add(klTok.scale(beta));
  }

  let loss: Tensor;
  if (lossType === 'grpo') loss = perTokenLoss.maskedMeanRows(mask).sum().scale(1 / sequences);
  else if (lossType === 'bnpo') loss = perTokenLoss.maskedMean(mask).scale(1 / microBatches);
  else if (lossType === 'dr_grpo') loss = perTokenLoss.maskedSum(mask).scale(1 / (sequences * maxLen));
  else loss = perTokenLoss.maskedSum(mask).scale(1 / Math.max(norm.tokens ?? sumOf(mask), 1));

  // Metrics (no gradient flows through step()).
  const low = ratio.neg().addScalar(1 - epsLow).step().mul(advantages.neg().step());     // r < 1 - epsLow and A < 0
  const high = ratio.addScalar(-(1 + epsHigh)).step().mul(advantages.step());            // r > 1 + epsHigh and A > 0
  return {
    loss,
    perTokenLoss,
    kl: klTok ? klTok.maskedMean(mask) : null,
    clipLow: low.maskedMean(mask),
    clipHigh: high.maskedMean(mask),
    clipRegion: low.add(high).maskedMean(mask),
  };
}
