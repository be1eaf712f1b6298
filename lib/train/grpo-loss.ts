/**
 * The GRPO objective (DeepSeekMath; TRL's GRPOTrainer.compute_loss) composed from tensor ops, per token i of
 * sequence s with advantage A_s:
 *
 *   r        = exp(logp - oldLogp)                         importance ratio
 *   surr     = -min(r A, clamp(r, 1 - epsLow, 1 + epsHigh) A)
 *   kl       = exp(ref - logp) - (ref - logp) - 1          k3 estimator (only when beta != 0)
 *   ptl      = surr + beta kl
 *   grpo:    mean over sequences of (sum_i m ptl / max(sum_i m, 1))
 *   bnpo:    sum(m ptl) / max(sum(m), 1)                   token-level mean over the batch
 *   dr_grpo: sum(m ptl) / (N maxLen)
 *
 * d loss / d logp per token (what the trainer feeds back into the model): with w the aggregation weight of the
 * token (m / (N max(M_s, 1)) for grpo, m / max(M, 1) for bnpo, m / (N maxLen) for dr_grpo),
 *   w * (-A r [unless clipped: A > 0 and r > 1 + epsHigh, or A < 0 and r < 1 - epsLow] + beta (1 - exp(ref - logp))).
 */
import { Sqlr1Error } from '../errors.js';
import { Tensor } from './tensor.js';

export type GrpoLossType = 'grpo' | 'bnpo' | 'dr_grpo';

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
}

export interface GrpoLossTensors {
  /** The scalar loss. */
  loss: Tensor;
  /** Per-token loss before masking and aggregation, [N, T]. */
  perTokenLoss: Tensor;
  /** Masked mean of the per-token k3 KL (TRL's `kl`); null without refLogp. */
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
  for (const [k, v] of Object.entries({ oldLogp, mask, ...(refLogp ? { refLogp } : {}) })) {
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
  if (lossType !== 'grpo' && lossType !== 'bnpo' && lossType !== 'dr_grpo') invalid(`grpoLoss: lossType must be 'grpo', 'bnpo' or 'dr_grpo', got ${String(lossType)}`);
  const maxLen = options.maxLen ?? T;
  if (!Number.isInteger(maxLen) || maxLen < 1) invalid(`grpoLoss: maxLen must be a positive integer, got ${String(maxLen)}`);

  const ratio = logp.sub(oldLogp).exp();
  const clipped = ratio.clamp(1 - epsLow, 1 + epsHigh);
  let perTokenLoss = ratio.mul(advantages).minimum(clipped.mul(advantages)).neg();
  let klTok: Tensor | null = null;
  if (refLogp) {
    const d = refLogp.sub(logp);
    klTok = d.exp().sub(d).addScalar(-1);
    if (beta !== 0) perTokenLoss = perTokenLoss.add(klTok.scale(beta));
  }

  let loss: Tensor;
  if (lossType === 'grpo') loss = perTokenLoss.maskedMeanRows(mask).mean();
  else if (lossType === 'bnpo') loss = perTokenLoss.maskedMean(mask);
  else loss = perTokenLoss.maskedSum(mask).scale(1 / (N * maxLen));

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
