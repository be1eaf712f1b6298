/**
 * Teacher-forced log-probs: for prompt+completion sequences, the log-probability of each completion token
 * under softmax(logits / T), computed on the device (only one float per token comes back). With the adapter
 * switched off this is GRPO's reference policy; with it on, the current policy.
 */
import { Sqlr1Error } from '../errors.js';
import { checkTokenIds } from '../tokenizer/token-range.js';
import type { LoraAdapter } from './lora.js';
import type { Model, ModelContext } from './model.js';

export interface TeacherForcedOptions {
  /** Each sequence: prompt tokens followed by completion tokens. */
  sequences: readonly (readonly number[])[];
  /** Index in each sequence where its completion starts (>= 1). */
  completionStart: readonly number[];
  /** Temperature the log-probs are taken at (default 1; use the sampling temperature for GRPO). */
  temperature?: number;
  /** Adapter to apply (default: whatever the context has; a new context has none). */
  lora?: LoraAdapter | null;
  /** A context to reuse (needs nSeq >= sequences and nCtx >= the longest sequence). */
  context?: ModelContext;
}

/** Returns, per sequence, the log-probs of its completion tokens. */
export async function teacherForcedLogprobs(model: Model, options: TeacherForcedOptions): Promise<Float32Array[]> {
  const { sequences, completionStart } = options;
  const T = options.temperature ?? 1;
  const N = sequences.length;
  if (N === 0) return [];
  if (completionStart.length !== N) throw new Sqlr1Error('ERR_INVALID_ARG', `completionStart needs ${N} entries, got ${completionStart.length}`);
  if (!(T > 0) || !Number.isFinite(T)) throw new Sqlr1Error('ERR_INVALID_ARG', `temperature must be > 0, got ${String(T)}`);
  let L = 0;
  sequences.forEach((s, i) => {
    const c = completionStart[i]!;
    if (!Number.isInteger(c) || c < 1 || c > s.length) throw new Sqlr1Error('ERR_INVALID_ARG', `completionStart[${i}] must be in [1, ${s.length}], got ${String(c)}`);
    checkTokenIds(s, model.info.nVocab, `sequence ${i}`);
    L = Math.max(L, s.length);
  });
  const ctx = options.context ?? model.createContext({ nSeq: N, nCtx: L });
  if (ctx.nSeq < N || ctx.nCtx < L) throw new Sqlr1Error('ERR_INVALID_ARG', `the context (${ctx.nSeq} x ${ctx.nCtx}) is too small for ${N} x ${L} tokens`);
  try {
    if (options.lora !== undefined) ctx.setLora(options.lora);
    for (let i = 0; i < N; i++) await ctx.seqClear(i);
    // Sequences are padded to one length: padding comes after the real tokens, which causal attention never sees.
    const tokens = new Int32Array(N * L);
    const targets = new Int32Array(N * L).fill(-1);
    sequences.forEach((s, i) => {
      tokens.set(s, i * L);
      for (let p = completionStart[i]! - 1; p < s.length - 1; p++) targets[i * L + p] = s[p + 1]!;
    });
    const r = await ctx.eval({ streams: Int32Array.from({ length: N }, (_, i) => i), tokens, nt: L, targets, temperature: T });
    return sequences.map((s, i) => r.targetLogprobs!.slice(i * L + completionStart[i]! - 1, i * L + s.length - 1));
  } finally {
    if (!options.context) await ctx.dispose();
  }
}
