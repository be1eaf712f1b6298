/** Files the build fetched with ggml that the library uses at run time. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Sqlr1Error } from '../errors.js';
import { packageRoot } from './binding.js';

/** The real Qwen2 BPE vocabulary (ggml-vocab-qwen2.gguf) from the llama.cpp source fetched at build time. */
export function defaultVocabPath(): string {
  const p = join(packageRoot, 'native', '.deps', 'llama.cpp', 'models', 'ggml-vocab-qwen2.gguf');
  if (!existsSync(p)) {
    throw new Sqlr1Error('ERR_GGUF_NOT_FOUND', `the Qwen2 vocabulary was not found at ${p}: run \`node scripts/fetch-ggml.mjs\` or pass a vocabulary GGUF`);
  }
  return p;
}
