/** Random-weight GGUF models with real architecture metadata and the real Qwen2 vocabulary. */
import { dirname } from 'node:path';
import { mkdirSync } from 'node:fs';
import { Sqlr1Error } from '../errors.js';
import { callNative, getBinding } from '../native/binding.js';
import { defaultThreads } from '../native/threads.js';
import { defaultVocabPath } from '../native/assets.js';

export const MODEL_SHAPES = ['tiny', 'demo', 'qwen2.5-0.5b', 'qwen2.5-1.5b', 'qwen2.5-3b', 'qwen2.5-7b'] as const;
export const MODEL_TYPES = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_K', 'q6_K'] as const;
export type ModelShape = (typeof MODEL_SHAPES)[number];
export type ModelType = (typeof MODEL_TYPES)[number];

export interface MakeModelOptions {
  /** Architecture preset (default 'tiny': hidden 64, 2 layers, the full Qwen2 vocabulary). */
  shape?: ModelShape;
  /** Storage type of the linear layers and embeddings (default 'f32'); norms and biases stay f32. */
  type?: ModelType;
  /** Output path (written through a temporary file and a rename). */
  out: string;
  /** GGUF to copy the tokenizer from (default: the Qwen2 vocabulary fetched with ggml). */
  vocab?: string;
  /** Weight seed (default 42). */
  seed?: number;
}

/** Writes a synthesized model; resolves to the number of bytes written. */
export async function makeModel(options: MakeModelOptions): Promise<number> {
  const shape = options.shape ?? 'tiny';
  const type = options.type ?? 'f32';
  if (!MODEL_SHAPES.includes(shape)) throw new Sqlr1Error('ERR_INVALID_ARG', `shape must be one of ${MODEL_SHAPES.join(', ')}, got ${String(shape)}`);
  if (!MODEL_TYPES.map((t) => t.toLowerCase()).includes(String(type).toLowerCase())) {
    throw new Sqlr1Error('ERR_INVALID_ARG', `type must be one of ${MODEL_TYPES.join(', ')}, got ${String(type)}`);
  }
  if (typeof options.out !== 'string' || options.out.length === 0) throw new Sqlr1Error('ERR_INVALID_ARG', 'out must be a file path');
  const seed = options.seed ?? 42;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new Sqlr1Error('ERR_INVALID_ARG', `seed must be a non-negative integer, got ${String(seed)}`);
  mkdirSync(dirname(options.out), { recursive: true });
  const { binding } = getBinding('cpu');
  return callNative(() => binding.makeModel({ shape, type, out: options.out, vocab: options.vocab ?? defaultVocabPath(), seed, threads: defaultThreads() }));
}
