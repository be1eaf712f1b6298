/** Files the library uses at run time besides the addon. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Sqlr1Error } from '../errors.js';
import { packageRoot } from './binding.js';

/**
 * The real Qwen2 BPE vocabulary (ggml-vocab-qwen2.gguf): in a published package it sits in assets/ (copied from
 * the fetched llama.cpp source when the package is packed); in the repository it is read from that source.
 */
export function defaultVocabPath(): string {
  const candidates = [
    join(packageRoot, 'assets', 'ggml-vocab-qwen2.gguf'),
    join(packageRoot, 'native', '.deps', 'llama.cpp', 'models', 'ggml-vocab-qwen2.gguf'),
  ];
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new Sqlr1Error('ERR_GGUF_NOT_FOUND', `the Qwen2 vocabulary was not found (looked in ${candidates.join(' and ')}): ` +
      'in the repository run `node scripts/fetch-ggml.mjs`; otherwise reinstall sqlr1-native or pass a vocabulary GGUF');
  }
  return found;
}
