/**
 * Hostile adapter files fail with ERR_ADAPTER_INVALID before anything is allocated: sizes, types, dimensions,
 * byte ranges, names and hyperparameters are checked against the model and the file. Each file is loaded in a
 * child process (replay.ts), so a ggml abort shows up as a crash of that file rather than killing the runner.
 */
import t from 'tap';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { createLora, loadModel } from '../../lib/model/index.js';
import { tempDir, tinyModel } from '../helpers/native.js';
import { writeGguf, type KvValue, type TensorSpec } from '../helpers/gguf-writer.js';
import { replay } from './replay.js';
import { ADAPTER_MODEL_TYPE } from './targets.js';

t.test('hostile adapters fail with ERR_ADAPTER_INVALID, never an abort', async (t) => {
  const dir = tempDir(t);
  const modelPath = await tinyModel(dir, ADAPTER_MODEL_TYPE);
  // The tiny model: hidden 64, 4 heads of 16, 2 KV heads (k, v out 32), ffn 128, 2 layers.
  const model = await loadModel(modelPath, { device: 'cpu', threads: 1 });
  const good = join(dir, 'good.gguf');
  const lora = createLora(model, { rank: 2, alpha: 4, targets: ['q', 'v'], seed: 1 });
  await lora.save(good);
  lora.dispose();
  model.dispose();

  const kv = (over: Record<string, KvValue> = {}): Record<string, KvValue> => ({
    'general.architecture': { type: 'str', value: 'qwen2' }, 'general.type': { type: 'str', value: 'adapter' },
    'adapter.type': { type: 'str', value: 'lora' }, 'adapter.lora.alpha': { type: 'f32', value: 4 }, ...over,
  });
  const f32 = (name: string, ne: number[], bytes = ne.reduce((a, b) => a * b, 1) * 4): TensorSpec => ({ name, ne, type: 0, data: new Uint8Array(bytes) });
  // A complete rank-2 adapter on q of both layers, for cases to break one piece at a time.
  const qPair = (il: number): TensorSpec[] => [f32(`blk.${il}.attn_q.weight.lora_a`, [64, 2]), f32(`blk.${il}.attn_q.weight.lora_b`, [2, 64])];
  const complete = () => [...qPair(0), ...qPair(1)];
  const cases: [string, Buffer][] = [
    // The issue's case: ggml would allocate 4 TiB for the tensor before any check (last, so that gguf's own
    // offset bookkeeping, which only looks at the tensors after it, has nothing to object to).
    ['a [2^40, 1] tensor', writeGguf(kv(), [...complete().slice(0, 3), f32('blk.1.attn_q.weight.lora_b', [2 ** 40, 1], 64)])],
    ['a [2^40, 1] tensor alone', writeGguf(kv(), [f32('blk.0.attn_q.weight.lora_a', [2 ** 40, 1], 64)])],
    ['a [2^30, 64] tensor with an unknown name', writeGguf(kv(), [...complete(), f32('blk.0.attn_q.weight.lora_x', [2 ** 30, 64], 64)])],
    ['a [2^40, 2^20] tensor (4 EiB)', writeGguf(kv(), [...complete().slice(0, 3), f32('blk.1.attn_q.weight.lora_b', [2 ** 40, 2 ** 20], 64)])],
    ['a [2^62, 4] tensor (element count overflows 64 bits)', writeGguf(kv(), [...complete().slice(0, 3), f32('blk.1.attn_q.weight.lora_b', [2 ** 62, 4], 64)])],
    ['a layer number with a leading zero', writeGguf(kv(), [f32('blk.00.attn_q.weight.lora_a', [64, 2]), ...complete().slice(1)])],
    ['a tensor whose data runs past the end of the file', writeGguf(kv(), [...complete().slice(0, 3), f32('blk.1.attn_q.weight.lora_b', [2, 64], 16)])],
    ['an f16 tensor', writeGguf(kv(), [{ ...f32('blk.0.attn_q.weight.lora_a', [64, 2], 64 * 2 * 2), type: 1 }, ...complete().slice(1)])],
    ['a quantized tensor', writeGguf(kv(), [{ ...f32('blk.0.attn_q.weight.lora_a', [64, 2], 2 * 34), type: 8 }, ...complete().slice(1)])],
    ['a 3-D tensor', writeGguf(kv(), [f32('blk.0.attn_q.weight.lora_a', [64, 2, 2]), ...complete().slice(1)])],
    ['lora_a of the wrong width', writeGguf(kv(), [f32('blk.0.attn_q.weight.lora_a', [63, 2]), ...complete().slice(1)])],
    ['a rank that differs between A and B', writeGguf(kv(), [f32('blk.0.attn_q.weight.lora_a', [64, 3]), ...complete().slice(1)])],
    ['rank 5000 (over the limit)', writeGguf(kv(), [f32('blk.0.attn_q.weight.lora_a', [64, 5000]), f32('blk.0.attn_q.weight.lora_b', [5000, 64])])],
    ['a layer past the model', writeGguf(kv(), [...complete(), ...qPair(2)])],
    ['a layer number that overflows int', writeGguf(kv(), [f32('blk.4294967296.attn_q.weight.lora_a', [64, 2]), ...complete().slice(1)])],
    ['a negative layer number', writeGguf(kv(), [f32('blk.-1.attn_q.weight.lora_a', [64, 2]), ...complete().slice(1)])],
    ['a layer number with a sign', writeGguf(kv(), [f32('blk.+0.attn_q.weight.lora_a', [64, 2]), ...complete().slice(1)])],
    ['an unknown tensor', writeGguf(kv(), [...complete(), f32('blk.0.attn_q.weight.lora_c', [64, 2])])],
    ['lora_a without its lora_b', writeGguf(kv(), complete().slice(0, 3))],
    ['a target on one layer only', writeGguf(kv(), [...complete(), f32('blk.0.attn_v.weight.lora_a', [64, 2]), f32('blk.0.attn_v.weight.lora_b', [2, 32])])],
    ['no tensors', writeGguf(kv(), [])],
    ['alpha NaN', writeGguf(kv({ 'adapter.lora.alpha': { type: 'f32', value: NaN } }), complete())],
    ['alpha negative', writeGguf(kv({ 'adapter.lora.alpha': { type: 'f32', value: -1 } }), complete())],
    ['alpha missing', writeGguf(Object.fromEntries(Object.entries(kv()).filter(([k]) => k !== 'adapter.lora.alpha')), complete())],
    ['another architecture', writeGguf(kv({ 'general.architecture': { type: 'str', value: 'llama' } }), complete())],
    ['a model file', writeGguf({ 'general.type': { type: 'str', value: 'model' } }, [])],
    ['a header cut short', writeGguf(kv(), complete()).subarray(0, 100)],
    ['not GGUF', Buffer.from('this is not a GGUF file at all')],
    ['empty', Buffer.alloc(0)],
  ];
  const files = cases.map(([what, bytes], i) => {
    const p = join(dir, `case-${i}.gguf`);
    writeFileSync(p, bytes);
    return p;
  });
  // Controls: the project's own adapter, and the hand-written complete one, load.
  const completeFile = join(dir, 'complete.gguf');
  writeFileSync(completeFile, writeGguf(kv(), complete()));
  const results = replay('adapter', [good, completeFile, ...files], dir, modelPath);
  const byFile = new Map(results.map((r) => [r.file, r]));
  t.same(byFile.get(good)?.outcomes, ['ok'], 'control: an adapter the project saved loads');
  t.same(byFile.get(completeFile)?.outcomes, ['ok'], 'control: the hand-written complete adapter loads');
  cases.forEach(([what], i) => {
    const r = byFile.get(files[i]!);
    t.notOk(r?.crash, `${what}: no crash${r?.crash ? ` (${r.crash})` : ''}`);
    t.same(r?.outcomes, ['ERR_ADAPTER_INVALID'], `${what}: ERR_ADAPTER_INVALID`);
  });
});
