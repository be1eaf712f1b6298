/**
 * Batched sampling: K completions for each of P prompts in one decode loop. Each prompt's KV is computed once
 * and copied to its K sequences on the device (prefix sharing); every step decodes one token for all live
 * sequences and draws it on the device, so only token ids and log-probs reach JavaScript.
 */
import { Sqlr1Error } from '../errors.js';
import { StreamDecoder } from '../tokenizer/index.js';
import { checkTokenIds } from '../tokenizer/token-range.js';
import type { LoraAdapter } from './lora.js';
import type { Model, ModelContext } from './model.js';

export interface SamplingOptions {
  /** 0 = greedy. Default 0.7 (the seed config's value). */
  temperature?: number;
  /** Keep the k most likely tokens (0 = off, default). Runs on the CPU: slower. */
  topK?: number;
  /** Nucleus sampling mass (1 = off, default). Runs on the CPU: slower. */
  topP?: number;
  /** Base seed; each sequence draws from its own stream derived from it. Default 0. */
  seed?: number;
  /**
   * Sequence i draws from stream `firstStream + i` of the base seed (default 0): a data-parallel rank passes the
   * index of its first sequence in the whole step, so its draws equal those of one process sampling every prompt.
   */
  firstStream?: number;
}

export interface GenerateOptions extends SamplingOptions {
  /** Prompts as token ids (already templated). */
  prompts: readonly (readonly number[])[];
  /** Completions per prompt (GRPO's group size K). Default 1. */
  samplesPerPrompt?: number;
  /** Most new tokens per completion. Default 256. */
  maxNewTokens?: number;
  /** Stop after the token that completes any of these strings (the text keeps it). Default none. */
  stop?: readonly string[];
  /** Stop at end-of-generation tokens (EOS/EOT). Default true. */
  stopAtEog?: boolean;
  /** A context to reuse (needs nSeq >= P*K and room for prompt + maxNewTokens); else one is made and freed. */
  context?: ModelContext;
  /** An adapter to sample with; on a reused context, whatever adapter it has stays unless this is given. */
  lora?: LoraAdapter | null;
  /** Called after each native decode call with the steps done so far and the sequences that were live. */
  onStep?: (step: number, live: number) => void;
  /** Sampling steps per native call (default 16); 1 checks stop strings after every token. */
  stepsPerCall?: number;
  signal?: AbortSignal;
}

export type FinishReason = 'eog' | 'stop' | 'length';

export interface Completion {
  promptIndex: number;
  sampleIndex: number;
  /** Generated ids (the EOG token, when one ended it, is included). */
  tokens: number[];
  /** Log-prob of each generated token under softmax(logits / T) (T = 1 when greedy). */
  logprobs: number[];
  text: string;
  finishReason: FinishReason;
}

export interface GenerateStats {
  prefillMs: number;
  decodeMs: number;
  steps: number;
}

export async function generate(model: Model, options: GenerateOptions): Promise<{ completions: Completion[]; stats: GenerateStats }> {
  const P = options.prompts.length;
  const K = options.samplesPerPrompt ?? 1;
  const maxNew = options.maxNewTokens ?? 256;
  const temperature = options.temperature ?? 0.7;
  const topK = options.topK ?? 0;
  const topP = options.topP ?? 1;
  const seed = options.seed ?? 0;
  const firstStream = options.firstStream ?? 0;
  const stop = options.stop ?? [];
  const stopAtEog = options.stopAtEog ?? true;
  const stepsPerCall = options.stepsPerCall ?? 16;
  if (P === 0) return { completions: [], stats: { prefillMs: 0, decodeMs: 0, steps: 0 } };
  if (!Number.isInteger(K) || K < 1) throw new Sqlr1Error('ERR_INVALID_ARG', `samplesPerPrompt must be a positive integer, got ${String(K)}`);
  if (!Number.isInteger(maxNew) || maxNew < 1) throw new Sqlr1Error('ERR_INVALID_ARG', `maxNewTokens must be a positive integer, got ${String(maxNew)}`);
  if (!(temperature >= 0) || !Number.isFinite(temperature)) throw new Sqlr1Error('ERR_INVALID_ARG', `temperature must be a finite number >= 0, got ${String(temperature)}`);
  if (!Number.isInteger(stepsPerCall) || stepsPerCall < 1) throw new Sqlr1Error('ERR_INVALID_ARG', `stepsPerCall must be a positive integer, got ${String(stepsPerCall)}`);
  if (!Number.isInteger(seed) || seed < 0) throw new Sqlr1Error('ERR_INVALID_ARG', `seed must be a non-negative integer, got ${String(seed)}`);
  if (!Number.isSafeInteger(firstStream) || firstStream < 0) throw new Sqlr1Error('ERR_INVALID_ARG', `firstStream must be a non-negative integer, got ${String(firstStream)}`);
  const vocab = model.info.nVocab;
  let longest = 0;
  options.prompts.forEach((p, i) => {
    if (p.length === 0) throw new Sqlr1Error('ERR_INVALID_ARG', `prompt ${i} is empty`);
    checkTokenIds(p, vocab, `prompt ${i}`);
    longest = Math.max(longest, p.length);
  });

  const N = P * K;
  const ctx = options.context ?? model.createContext({ nSeq: N, nCtx: longest + maxNew });
  if (ctx.nSeq < N) throw new Sqlr1Error('ERR_INVALID_ARG', `the context holds ${ctx.nSeq} sequences but ${N} are needed`);
  if (ctx.nCtx < longest + maxNew) {
    throw new Sqlr1Error('ERR_CONTEXT_OVERFLOW', `prompt (${longest}) + maxNewTokens (${maxNew}) exceeds the context's ${ctx.nCtx} tokens per sequence`);
  }
  try {
    if (options.lora !== undefined) ctx.setLora(options.lora);
    const t0 = performance.now();
    // Prefill all but each prompt's last token once, then share those cells with the prompt's K sequences.
    for (let p = 0; p < P; p++) {
      const prompt = options.prompts[p]!;
      for (let k = 0; k < K; k++) await ctx.seqClear(p * K + k);
      if (prompt.length > 1) {
        await ctx.eval({ streams: Int32Array.of(p * K), tokens: Int32Array.from(prompt.slice(0, -1)), nt: prompt.length - 1 });
      }
      if (K > 1) await ctx.seqCopy(p * K, Array.from({ length: K - 1 }, (_, k) => p * K + k + 1));
    }
    const t1 = performance.now();

    const seqs = Array.from({ length: N }, (_, i) => ({
      promptIndex: Math.floor(i / K),
      sampleIndex: i % K,
      tokens: [] as number[],
      logprobs: [] as number[],
      text: '',
      finishReason: 'length' as FinishReason,
      decoder: new StreamDecoder(model.tokenizer),
      seed: seedFor(seed, firstStream + i),
      next: options.prompts[Math.floor(i / K)]!.at(-1)!,
      live: true,
    }));
    const eog = Int32Array.from(stopAtEog ? model.tokenizer.eogIds : []);
    const stopTail = stop.length ? Math.max(...stop.map((x) => x.length)) + 16 : 0;
    let steps = 0;
    while (steps < maxNew) {
      if (options.signal?.aborted) throw new Sqlr1Error('ERR_ABORTED', 'generation was aborted');
      const live = seqs.map((s, i) => (s.live ? i : -1)).filter((i) => i >= 0);
      if (live.length === 0) break;
      // Several steps per native call keep JavaScript off the per-token path; stop strings are checked after
      // each call, and tokens a stopped sequence drew past its stop string are dropped.
      const chunk = Math.min(stepsPerCall, maxNew - steps);
      const res = await ctx.decode({
        streams: Int32Array.from(live),
        tokens: Int32Array.from(live.map((i) => seqs[i]!.next)),
        seeds: BigUint64Array.from(live.map((i) => seqs[i]!.seed)),
        budget: Int32Array.from(live.map((i) => maxNew - seqs[i]!.tokens.length)),
        eog, steps: chunk, temperature, topK, topP,
      });
      for (let step = 0; step < res.steps; step++) {
        live.forEach((i, j) => {
          const s = seqs[i]!;
          const tok = res.tokens[step * live.length + j]!;
          if (tok < 0 || !s.live) return;
          s.tokens.push(tok);
          s.logprobs.push(res.logprobs[step * live.length + j]!);
          s.next = tok;
          if (eog.includes(tok)) {
            s.finishReason = 'eog';
            s.live = false;
          } else if (stop.length > 0) {
            s.text += s.decoder.push(tok);
            const tail = s.text.slice(-stopTail);
            if (stop.some((x) => tail.includes(x))) {
              s.finishReason = 'stop';
              s.live = false;
            }
          }
          if (s.tokens.length >= maxNew) s.live = false;
        });
      }
      steps += res.steps;
      options.onStep?.(steps, live.length);
    }
    const t2 = performance.now();
    const completions = seqs.map((s) => ({
      promptIndex: s.promptIndex,
      sampleIndex: s.sampleIndex,
      tokens: s.tokens,
      logprobs: s.logprobs,
      text: model.tokenizer.decode(s.tokens, { skipSpecial: true }),
      finishReason: s.finishReason,
    }));
    return { completions, stats: { prefillMs: t1 - t0, decodeMs: t2 - t1, steps } };
  } finally {
    if (!options.context) await ctx.dispose();
  }
}

/** A per-sequence seed from the base seed (splitmix64), so sequence i's draws do not depend on the batch. */
export function seedFor(base: number, index: number): bigint {
  const M = (1n << 64n) - 1n;
  let z = (BigInt(base) * 0x9e3779b97f4a7c15n + BigInt(index + 1) * 0xbf58476d1ce4e5b9n) & M;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M;
  return z ^ (z >> 31n);
}
