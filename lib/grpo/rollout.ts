/**
 * Rollouts: `prompts_per_step` questions x `num_generations` completions in one batched decode (each prompt's
 * KV computed once and shared by its group), stopping at the end of the SQL block, with the sampler's per-token
 * log-probs kept; and the layout of a batch of rollouts for the trainer (micro-batches of at most
 * `micro_batch_tokens` padded tokens).
 */
import { generate, type Completion } from '../model/generate.js';
import type { LoraAdapter } from '../model/lora.js';
import type { Model, ModelContext } from '../model/model.js';

/** The answer ends at the closing fence of its ```sql block (or at an end-of-generation token). */
export const ROLLOUT_STOP = ['```\n'] as const;

export interface RolloutOptions {
  /** Prompt token ids, one per question. */
  prompts: readonly (readonly number[])[];
  /** Completions per prompt (K). */
  numGenerations: number;
  maxCompletionLength: number;
  temperature: number;
  topP: number;
  topK: number;
  /** Seed of this step's draws (each sequence derives its own stream from it). */
  seed: number;
  /** The stream of the first sequence (a data-parallel rank's offset in the whole step; default 0). */
  firstStream?: number;
  lora: LoraAdapter;
  /** Reused between steps (nSeq >= P K, nCtx >= longest prompt + maxCompletionLength). */
  context?: ModelContext;
  /** Ignore end-of-generation tokens and stop strings: every completion runs to maxCompletionLength (benchmarks). */
  forceFullLength?: boolean;
  signal?: AbortSignal;
}

/** One sampled completion with what training needs of it. */
export interface Rollout {
  promptIndex: number;
  sampleIndex: number;
  promptTokens: readonly number[];
  completion: Completion;
  /** Ran out of tokens before stopping (completions/clipped_ratio; masked when mask_truncated_completions). */
  truncated: boolean;
}

export async function sampleRollouts(model: Model, options: RolloutOptions): Promise<{ rollouts: Rollout[]; seconds: number }> {
  const t0 = performance.now();
  const { completions } = await generate(model, {
    prompts: options.prompts,
    samplesPerPrompt: options.numGenerations,
    maxNewTokens: options.maxCompletionLength,
    temperature: options.temperature,
    topP: options.topP,
    topK: options.topK,
    seed: options.seed,
    ...(options.firstStream ? { firstStream: options.firstStream } : {}),
    stop: options.forceFullLength ? [] : ROLLOUT_STOP,
    stopAtEog: !options.forceFullLength,
    lora: options.lora,
    ...(options.context ? { context: options.context } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  const rollouts = completions.map((c) => ({
    promptIndex: c.promptIndex,
    sampleIndex: c.sampleIndex,
    promptTokens: options.prompts[c.promptIndex]!,
    completion: c,
    truncated: c.finishReason === 'length',
  }));
  return { rollouts, seconds: (performance.now() - t0) / 1000 };
}

/**
 * Splits sequence indices into micro-batches, in order, each as large as fits in `maxTokens` by `tokensOf` (the
 * trainer's packed size of those sequences, e.g. `packedTokens`). A sequence larger than `maxTokens` on its own
 * gets a micro-batch of its own.
 */
export function microBatches(indices: readonly number[], maxTokens: number, tokensOf: (batch: readonly number[]) => number): number[][] {
  const out: number[][] = [];
  let cur: number[] = [];
  for (const i of indices) {
    if (cur.length > 0 && tokensOf([...cur, i]) > maxTokens) {
      out.push(cur);
      cur = [];
    }
    cur.push(i);
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

/** A deterministic 31-bit seed from (base seed, step, stream): every draw of a run depends on these alone. */
export function derivedSeed(seed: number, step: number, stream: number): number {
  let h = 0x811c9dc5;
  for (const x of [seed, step, stream]) {
    for (let k = 0; k < 4; k++) {
      h ^= (Math.floor(x / 2 ** (8 * k)) & 0xff);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
  }
  return h & 0x7fffffff;
}
