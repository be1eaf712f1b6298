/**
 * A loaded model: native weights on a device, its tokenizer and chat template, and contexts to run it in.
 */
import { statSync } from 'node:fs';
import { Sqlr1Error } from '../errors.js';
import { callNative, callNativeSync, getBinding, type DeviceRequest, type Device } from '../native/binding.js';
import { defaultThreads } from '../native/threads.js';
import type {
  NativeBinding, NativeContext, NativeContextMemory, NativeDecodeRequest, NativeDecodeResult, NativeEvalRequest, NativeEvalResult, NativeModel,
  NativeModelInfo,
} from '../native/types.js';
import { Tokenizer, renderChatForTokenizer, type ChatMessage } from '../tokenizer/index.js';
import type { LoraAdapter } from './lora.js';

export interface LoadModelOptions {
  /** Where to run: 'auto' (default) takes CUDA when usable, else the CPU (logging why). */
  device?: DeviceRequest;
  /** CPU threads for ggml; default: SQLR1_THREADS, else all cores. */
  threads?: number;
  /** Receives informational messages (device fallback); default: stderr unless SQLR1_QUIET=1. */
  log?: (msg: string) => void;
}

export interface ContextOptions {
  /** Sequences the context holds at once (default 1). */
  nSeq?: number;
  /** Tokens each sequence can hold (default 2048). */
  nCtx?: number;
  /** Most tokens per forward pass; longer prompts run in chunks (default 512). */
  nBatch?: number;
  /**
   * Apply an adapter's targets that share an input (q/k/v, gate/up) as one stacked product pair, refreshed from
   * the adapter at the start of every call (default true: at decode, fewer and larger kernels). False runs one
   * product pair per target, the same function; for comparisons.
   */
  packAdapter?: boolean;
}

/** Loads a GGUF model of the Qwen2 family (`qwen2` or `llama` architecture). */
export async function loadModel(path: string, options: LoadModelOptions = {}): Promise<Model> {
  if (typeof path !== 'string' || path.length === 0) throw new Sqlr1Error('ERR_INVALID_ARG', 'loadModel: path must be a non-empty string');
  try {
    if (!statSync(path).isFile()) throw new Error('not a file');
  } catch {
    throw new Sqlr1Error('ERR_GGUF_NOT_FOUND', `model file not found: ${path}`);
  }
  if (options.threads !== undefined && !(Number.isInteger(options.threads) && options.threads >= 0)) {
    throw new Sqlr1Error('ERR_INVALID_ARG', `threads must be a non-negative integer, got ${String(options.threads)}`);
  }
  const { binding, device } = getBinding(options.device ?? 'auto', options.log);
  // The tokenizer reads the metadata in TypeScript first: a bad file fails here without touching ggml.
  const tokenizer = await Tokenizer.fromGguf(path);
  const native = await callNative(() => binding.loadModel(path, { device, threads: options.threads ?? defaultThreads() }));
  const info = native.info();
  if (tokenizer.vocabSize > info.nVocab) {
    native.dispose();
    throw new Sqlr1Error('ERR_GGUF_INVALID', `the tokenizer has ${tokenizer.vocabSize} tokens but the embedding only ${info.nVocab} rows`);
  }
  return new Model(path, device, binding, native, info, tokenizer);
}

export class Model {
  private disposed = false;

  /** @internal */
  constructor(
    readonly path: string,
    readonly device: Device,
    /** @internal */ readonly binding: NativeBinding,
    private readonly native: NativeModel,
    readonly info: NativeModelInfo,
    readonly tokenizer: Tokenizer,
  ) {}

  /** Creates a KV-cache context for up to `nSeq` sequences of `nCtx` tokens. */
  createContext(options: ContextOptions = {}): ModelContext {
    this.check();
    const nSeq = options.nSeq ?? 1;
    const nCtx = options.nCtx ?? 2048;
    const nBatch = options.nBatch ?? 512;
    for (const [k, v] of Object.entries({ nSeq, nCtx, nBatch })) {
      if (!Number.isInteger(v) || v < 1) throw new Sqlr1Error('ERR_INVALID_ARG', `${k} must be a positive integer, got ${String(v)}`);
    }
    const packAdapter = options.packAdapter ?? true;
    if (typeof packAdapter !== 'boolean') throw new Sqlr1Error('ERR_INVALID_ARG', `packAdapter must be a boolean, got ${String(packAdapter)}`);
    const native = callNativeSync(() => new this.binding.Context(this.native, { nSeq, nCtx, nBatch, packAdapter }));
    return new ModelContext(native, this, nSeq, nCtx);
  }

  /** Renders chat messages with the model's template (ChatML when the file has none). */
  renderChat(messages: readonly ChatMessage[], addGenerationPrompt = true): string {
    return renderChatForTokenizer(this.tokenizer, messages, { addGenerationPrompt });
  }

  /** Chat messages to prompt token ids (special tokens in the rendered template are parsed). */
  encodeChat(messages: readonly ChatMessage[]): number[] {
    return this.tokenizer.encode(this.renderChat(messages), { addSpecial: true, parseSpecial: true });
  }

  /**
   * A 64-bit FNV-1a digest (hex) of every weight tensor's bytes, read back from the device: training must
   * leave all of them unchanged.
   */
  weightDigests(): Record<string, string> {
    this.check();
    return callNativeSync(() => this.native.weightDigests());
  }

  /** @internal */
  get nativeModel(): NativeModel {
    this.check();
    return this.native;
  }

  /** Frees the weights once no context uses them. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.native.dispose();
  }

  private check(): void {
    if (this.disposed) throw new Sqlr1Error('ERR_DISPOSED', 'the model was disposed');
  }
}

/** A KV cache of `nSeq` sequences and the compute memory to run the model over it. */
export class ModelContext {
  private disposed = false;
  private pending: Promise<unknown> = Promise.resolve();

  /** @internal */
  constructor(
    private readonly native: NativeContext,
    readonly model: Model,
    readonly nSeq: number,
    readonly nCtx: number,
  ) {}

  /** Runs one forward pass (calls are serialized). */
  eval(req: NativeEvalRequest): Promise<NativeEvalResult> {
    return this.serialize(() => this.native.eval(req));
  }

  /** Runs up to `req.steps` sampling steps natively (one token per live stream per step). */
  decode(req: NativeDecodeRequest): Promise<NativeDecodeResult> {
    return this.serialize(() => this.native.decode(req));
  }

  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    if (this.disposed) return Promise.reject(new Sqlr1Error('ERR_DISPOSED', 'the context was disposed'));
    const run = this.pending.then(() => callNative(fn));
    this.pending = run.catch(() => undefined);
    return run;
  }

  /** Shares sequence `src`'s cells with each of `dsts` (a device-side copy of its KV). */
  async seqCopy(src: number, dsts: number[]): Promise<void> {
    this.check();
    await this.pending;
    callNativeSync(() => this.native.seqCopy(src, Int32Array.from(dsts)));
  }

  async seqClear(seq: number): Promise<void> {
    this.check();
    await this.pending;
    callNativeSync(() => this.native.seqClear(seq));
  }

  seqLength(seq: number): number {
    this.check();
    return callNativeSync(() => this.native.seqLength(seq));
  }

  /** Applies an adapter of this context's model to every later pass (null: the base model). */
  setLora(adapter: LoraAdapter | null): void {
    this.check();
    callNativeSync(() => this.native.setLora(adapter ? adapter.native : null));
  }

  memory(): NativeContextMemory {
    this.check();
    return this.native.memory();
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.pending;
    this.native.dispose();
  }

  private check(): void {
    if (this.disposed) throw new Sqlr1Error('ERR_DISPOSED', 'the context was disposed');
  }
}
