/**
 * Training a LoRA adapter on a frozen base: teacher-forced per-token log-probs of completions (the policy with
 * the adapter, the reference without it) and the backward pass from d loss / d logp into the adapter's tensors.
 *
 *   const tr = await LoraTrainer.create(model, adapter);
 *   const batch = tr.pack({ sequences, completionStart });
 *   const ref = await tr.logprobs(batch, { adapter: false, temperature });   // [N, C], no activations kept
 *   const pol = await tr.logprobs(batch, { keep: true, temperature });       // keeps each layer's input
 *   ... compose the loss from `pol` (a constant with requiresGrad) and get d loss / d pol ...
 *   await tr.backward(grad);                     // adds into tr.params (loraParams(adapter)) gradients
 *   await new AdamW(tr.params).step();
 *
 * Log-prob arrays are completion-aligned, [N, C] row-major with C the longest completion: entry (i, j) is the
 * log-prob of completion token j of sequence i; entries past a completion's end are 0 (mask them).
 *
 * Sequences that share a prompt (a GRPO group) run it once: `pack` lays each group out as one row, the prompt
 * then every completion, each completion seeing the prompt and itself (its first input token, the prompt's last,
 * is repeated per completion so that each predicts its own first token). A group of K completions of C tokens
 * after a P-token prompt costs P - 1 + K C tokens instead of K (P + C).
 * The backward recomputes one layer at a time from the saved inputs (activation checkpointing), so memory
 * grows with the depth only by one [hidden x tokens] F32 tensor per layer.
 */
import { Sqlr1Error } from '../errors.js';
import { callNative, callNativeSync } from '../native/binding.js';
import { checkTokenIds } from '../tokenizer/token-range.js';
import type { LoraAdapter } from '../model/lora.js';
import type { Model } from '../model/model.js';
import type { NativeTrainer, NativeTrainerMemory } from '../native/types.js';
import { loraParams, type ParamStore } from './params.js';

export type TrainCompute = 'f32' | 'bf16';

export interface LoraTrainerOptions {
  /**
   * The type frozen weights are converted to for matrix products (default: 'bf16' on CUDA, 'f32' on the CPU).
   * 'bf16' runs on the GPU's matrix units with F32 accumulation; 'f32' is exact (checks, CPU training).
   */
  compute?: TrainCompute;
  /** Most tokens (sequences x padded length) one batch may hold (default 16384). */
  maxTokens?: number;
  /**
   * Wait after each graph and kernel of a layer-by-layer CUDA pass instead of queuing them with no host waits
   * (default false). The results are the same bits; for comparisons and timing.
   */
  sync?: boolean;
  /**
   * Print where each backward's time goes to stderr: 1 (or true) per pass part (implies `sync`, so each part is
   * timed alone); 2 also runs every graph node by node and prints the heaviest ops (a diagnostic; slow).
   * Default off.
   */
  profile?: boolean | 0 | 1 | 2;
  /**
   * On CUDA in BF16, run the kept forward and the backward around the project's fused kernels (default true);
   * false keeps the written-out graphs (for comparisons).
   */
  fusedKernels?: boolean;
}

export interface TrainBatchInput {
  /** Each sequence: prompt tokens followed by completion tokens. */
  sequences: readonly (readonly number[])[];
  /** Index in each sequence where its completion starts (>= 1). */
  completionStart: readonly number[];
  /**
   * Run each prompt once for every sequence that shares it (identical tokens before completionStart), default
   * true. The log-probs equal those of the sequences run one by one up to rounding; false keeps one row per
   * sequence.
   */
  sharePrompts?: boolean;
}

/** A batch in the trainer's layout (rows padded at the end to one length). */
export interface TrainBatch {
  readonly n: number;
  /** Rows of the layout: n, or one per distinct prompt when prompts are shared. */
  readonly rows: number;
  /** Padded row length. */
  readonly length: number;
  /** Longest completion: the C of [N, C] arrays. */
  readonly maxCompletion: number;
  readonly completionStart: readonly number[];
  readonly completionLength: readonly number[];
  /** 1 on completion tokens, 0 past each completion's end, [N, C]. */
  readonly mask: Float32Array;
  /** @internal */ readonly tokens: Int32Array;
  /** @internal */ readonly targets: Int32Array;
  /** @internal Flat index of the position that predicts each sequence's first completion token. */
  readonly offsets: readonly number[];
  /** @internal Positions and spans of a shared-prompt layout (NativeTrainerForward's). */
  readonly pos?: Int32Array;
  /** @internal */ readonly span?: Int32Array;
}

/** Which sequences share a row, and the row length. */
interface Layout {
  rows: number[][];
  length: number;
  /** Rows hold a prompt and several completions (else one sequence per row, causal). */
  shared: boolean;
}

// Prompt keys by sequence array: micro-batching asks for the same sequences' layout many times.
const promptKeys = new WeakMap<readonly number[], { start: number; key: string }>();
function promptKey(s: readonly number[], start: number): string {
  const hit = promptKeys.get(s);
  if (hit && hit.start === start) return hit.key;
  const key = s.slice(0, start).join(',');
  promptKeys.set(s, { start, key });
  return key;
}

function layoutOf(sequences: readonly (readonly number[])[], completionStart: readonly number[], sharePrompts: boolean): Layout {
  const plain = (): Layout => ({ rows: sequences.map((_, i) => [i]), length: Math.max(2, ...sequences.map((s) => s.length)), shared: false });
  if (!sharePrompts) return plain();
  const byPrompt = new Map<string, number[]>();
  sequences.forEach((s, i) => {
    const key = promptKey(s, completionStart[i]!);
    const row = byPrompt.get(key);
    if (row) row.push(i);
    else byPrompt.set(key, [i]);
  });
  const rows = [...byPrompt.values()];
  if (rows.every((r) => r.length === 1)) return plain();
  // A row: the prompt but its last token, then per completion that token and the completion but its last.
  const rowLength = (r: number[]) => completionStart[r[0]!]! - 1 + r.reduce((a, i) => a + sequences[i]!.length - completionStart[i]!, 0);
  return { rows, length: Math.max(2, ...rows.map(rowLength)), shared: true };
}

/**
 * Tokens (rows x padded length) of the batch `pack` makes from these sequences: what a trainer's maxTokens and a
 * micro-batch budget count.
 */
export function packedTokens(input: TrainBatchInput): number {
  const l = layoutOf(input.sequences, input.completionStart, input.sharePrompts ?? true);
  return l.rows.length * l.length;
}

export interface LogprobOptions {
  /** Apply the adapter (default true); false gives the frozen base, GRPO's reference policy. */
  adapter?: boolean;
  /** Temperature the log-probs are taken at (default 1; use the sampling temperature for GRPO). */
  temperature?: number;
  /** Save the activations for one `backward` (default false; needs the adapter on). */
  keep?: boolean;
}

function invalid(msg: string): never {
  throw new Sqlr1Error('ERR_INVALID_ARG', msg);
}

export class LoraTrainer {
  private native: NativeTrainer | undefined;
  private kept: TrainBatch | undefined;

  private constructor(readonly model: Model, readonly adapter: LoraAdapter, readonly compute: TrainCompute, native: NativeTrainer) {
    this.native = native;
  }

  static async create(model: Model, adapter: LoraAdapter, options: LoraTrainerOptions = {}): Promise<LoraTrainer> {
    const compute = options.compute ?? (model.device === 'cuda' ? 'bf16' : 'f32');
    if (compute !== 'f32' && compute !== 'bf16') invalid(`LoraTrainer: compute must be 'f32' or 'bf16', got ${String(compute)}`);
    const maxTokens = options.maxTokens ?? 16384;
    if (!Number.isInteger(maxTokens) || maxTokens < 2) invalid(`LoraTrainer: maxTokens must be an integer >= 2, got ${String(maxTokens)}`);
    if (adapter.model !== model) invalid('LoraTrainer: the adapter belongs to another model');
    const profile = options.profile === true ? 1 : options.profile === false || options.profile === undefined ? 0 : options.profile;
    if (profile !== 0 && profile !== 1 && profile !== 2) invalid(`LoraTrainer: profile must be a boolean, 0, 1 or 2, got ${String(options.profile)}`);
    for (const k of ['sync', 'fusedKernels'] as const) {
      if (options[k] !== undefined && typeof options[k] !== 'boolean') invalid(`LoraTrainer: ${k} must be a boolean, got ${String(options[k])}`);
    }
    const native = await callNative(() => model.binding.createTrainer(model.nativeModel, adapter.native, {
      compute, maxTokens, sync: options.sync ?? false, profile, fusedKernels: options.fusedKernels ?? true,
    }));
    return new LoraTrainer(model, adapter, compute, native);
  }

  /** The adapter's parameters (where `backward` adds gradients). */
  get params(): ParamStore {
    return loraParams(this.adapter);
  }

  private handle(): NativeTrainer {
    if (!this.native) throw new Sqlr1Error('ERR_DISPOSED', 'the trainer was disposed');
    return this.native;
  }

  /** Packs sequences into the trainer's layout; validates token ids and completion starts. */
  pack(input: TrainBatchInput): TrainBatch {
    const { sequences, completionStart } = input;
    const N = sequences.length;
    if (N === 0) invalid('pack: at least one sequence is needed');
    if (!Array.isArray(completionStart) || completionStart.length !== N) invalid(`pack: completionStart needs ${N} entries, got ${String(completionStart?.length)}`);
    if (input.sharePrompts !== undefined && typeof input.sharePrompts !== 'boolean') invalid(`pack: sharePrompts must be a boolean, got ${String(input.sharePrompts)}`);
    const V = this.model.info.nVocab;
    let C = 1;
    const lengths: number[] = [];
    sequences.forEach((s, i) => {
      const c = completionStart[i]!;
      if (!Number.isInteger(c) || c < 1 || c >= s.length) invalid(`pack: completionStart[${i}] must be in [1, ${s.length - 1}] (a completion of >= 1 token after >= 1 prompt token), got ${String(c)}`);
      checkTokenIds(s, V, `pack: sequence ${i}`);
      C = Math.max(C, s.length - c);
      lengths.push(s.length - c);
    });
    const layout = layoutOf(sequences, completionStart, input.sharePrompts ?? true);
    const R = layout.rows.length, L = layout.length;
    const tokens = new Int32Array(R * L);
    const targets = new Int32Array(R * L).fill(-1);
    const mask = new Float32Array(N * C);
    const offsets: number[] = new Array(N);
    sequences.forEach((_, i) => mask.fill(1, i * C, i * C + lengths[i]!));
    if (!layout.shared) {
      sequences.forEach((s, i) => {
        tokens.set(s, i * L);
        const c = completionStart[i]!;
        for (let p = c - 1; p < s.length - 1; p++) targets[i * L + p] = s[p + 1]!;
        offsets[i] = i * L + c - 1;
      });
      return { n: N, rows: R, length: L, maxCompletion: C, completionStart: [...completionStart], completionLength: lengths, mask, tokens, targets, offsets };
    }
    // Shared prompts: span {from, sharedEnd, ownFrom} per token (the token sees [from, sharedEnd) and [ownFrom, itself]).
    const pos = new Int32Array(R * L);
    const span = new Int32Array(3 * R * L);
    const put = (at: number, token: number, target: number, position: number, sharedEnd: number, ownFrom: number) => {
      tokens[at] = token;
      targets[at] = target;
      pos[at] = position;
      span[3 * at + 1] = sharedEnd;
      span[3 * at + 2] = ownFrom;
    };
    layout.rows.forEach((row, r) => {
      const base = r * L;
      const first = sequences[row[0]!]!;
      const P = completionStart[row[0]!]!;
      for (let j = 0; j < P - 1; j++) put(base + j, first[j]!, -1, j, 0, 0);  // the prompt, causal
      let o = P - 1;
      for (const i of row) {
        const s = sequences[i]!;
        offsets[i] = base + o;
        for (let m = 0; m < lengths[i]!; m++) put(base + o + m, s[P - 1 + m]!, s[P + m]!, P - 1 + m, P - 1, o);
        o += lengths[i]!;
      }
      for (let j = o; j < L; j++) put(base + j, 0, -1, j, 0, j);  // padding sees only itself
    });
    return { n: N, rows: R, length: L, maxCompletion: C, completionStart: [...completionStart], completionLength: lengths, mask, tokens, targets, offsets, pos, span };
  }

  /** Per-token log-probs of each completion, [N, C] (0 past a completion's end). */
  async logprobs(batch: TrainBatch, options: LogprobOptions = {}): Promise<Float32Array> {
    const temperature = options.temperature ?? 1;
    if (typeof temperature !== 'number' || !(temperature > 0) || !Number.isFinite(temperature)) invalid(`logprobs: temperature must be a positive number, got ${String(temperature)}`);
    const adapter = options.adapter ?? true;
    const keep = options.keep ?? false;
    if (keep && !adapter) invalid('logprobs: keep (for a backward pass) needs the adapter on');
    const layout = batch.span ? { pos: batch.pos!, span: batch.span } : {};
    const lp = await callNative(() => this.handle().forward({ tokens: batch.tokens, targets: batch.targets, ns: batch.rows, nt: batch.length, temperature, adapter, keep, ...layout }));
    this.kept = keep ? batch : undefined;
    const C = batch.maxCompletion;
    const out = new Float32Array(batch.n * C);
    for (let i = 0; i < batch.n; i++) out.set(lp.subarray(batch.offsets[i]!, batch.offsets[i]! + batch.completionLength[i]!), i * C);
    return out;
  }

  /**
   * Backward from d loss / d logp ([N, C], the layout `logprobs` returned; entries past a completion's end are
   * ignored) into the adapter: gradients add to `params`. Needs the last `logprobs` call to have
   * kept its activations; each such call serves one backward.
   */
  async backward(gradLogp: Float32Array): Promise<void> {
    const batch = this.kept;
    if (!batch) throw new Sqlr1Error('ERR_INVALID_STATE', 'backward needs a logprobs call with keep: true first (each serves one backward)');
    if (!(gradLogp instanceof Float32Array) || gradLogp.length !== batch.n * batch.maxCompletion) {
      invalid(`backward: expected a Float32Array of ${batch.n * batch.maxCompletion} values ([${batch.n}, ${batch.maxCompletion}]), got ${gradLogp instanceof Float32Array ? gradLogp.length : typeof gradLogp}`);
    }
    const C = batch.maxCompletion;
    const full = new Float32Array(batch.rows * batch.length);
    for (let i = 0; i < batch.n; i++) full.set(gradLogp.subarray(i * C, i * C + batch.completionLength[i]!), batch.offsets[i]!);
    this.kept = undefined;
    await callNative(() => this.handle().backward(full));
  }

  /** Bytes of device memory the trainer holds. */
  memory(): NativeTrainerMemory {
    return callNativeSync(() => this.handle().memory());
  }

  /** Frees the saved activations and compute memory (made again by the next call). */
  release(): void {
    this.kept = undefined;
    callNativeSync(() => this.handle().release());
  }

  dispose(): void {
    if (this.native) callNativeSync(() => this.native!.dispose());
    this.native = undefined;
  }
}
