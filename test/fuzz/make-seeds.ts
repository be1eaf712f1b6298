/**
 * Seed models for the model and reader fuzzers (scripts/fuzz.sh): minimal valid qwen2 and llama files of a few
 * weight types, written by the tests' GGUF writer. The synthesized presets carry the full vocabulary (megabytes);
 * these stay a few kilobytes, so that the committed corpus stays small.
 *
 *   node --import=@tapjs/typescript/import test/fuzz/make-seeds.ts <dir>
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { minimalQwen2, writeGguf } from '../helpers/gguf-writer.js';

const dir = process.argv[2];
if (!dir) throw new Error('usage: make-seeds.ts <dir>');
mkdirSync(dir, { recursive: true });
// ggml type ids and bytes per n values: f32 0, f16 1, q4_0 2 (32 in 18), q8_0 8 (32 in 34).
const seeds: [string, Parameters<typeof minimalQwen2>[0]][] = [
  ['qwen2-f32', { embd: 8 }],
  ['qwen2-f16', { embd: 8, wtype: 1, wbytes: (n) => n * 2 }],
  ['qwen2-q8_0', { wtype: 8, wbytes: (n) => (n / 32) * 34 }],
  ['qwen2-q4_0', { wtype: 2, wbytes: (n) => (n / 32) * 18 }],
  ['llama-f32', { arch: 'llama', embd: 8 }],
];
for (const [name, opts] of seeds) {
  const m = minimalQwen2(opts);
  if (name === 'qwen2-f32') {
    // A separate output matrix and the q/k/v biases, so the optional tensors are covered too.
    const E = opts!.embd!;
    const f32 = (n: string, ne: number[]) => ({ name: n, ne, type: 0, data: new Uint8Array(ne.reduce((a, b) => a * b, 1) * 4) });
    m.tensors.push(f32('output.weight', [E, 8]), f32('blk.0.attn_q.bias', [E]), f32('blk.0.attn_k.bias', [E]), f32('blk.0.attn_v.bias', [E]));
  }
  writeFileSync(join(dir, `${name}.gguf`), writeGguf(m.kv, m.tensors));
}
process.stdout.write(`wrote ${seeds.length} model seeds to ${dir}\n`);
