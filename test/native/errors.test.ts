/**
 * Bad input never aborts the process: each case fails with a typed error and its code, and repeated failing
 * loads do not grow memory.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generate, loadModel } from '../../lib/model/index.js';
import { packageRoot } from '../../lib/native/binding.js';
import { binding, tempDir, testDevices, tinyModel } from '../helpers/native.js';
import { minimalQwen2, writeGguf } from '../helpers/gguf-writer.js';

t.test('bad model files', async (t) => {
  const dir = tempDir(t);
  const good = await tinyModel(dir, 'f32');
  const bytes = readFileSync(good);
  const file = (name: string, data: Uint8Array) => {
    const p = join(dir, name);
    writeFileSync(p, data);
    return p;
  };
  const cases: [string, string, string][] = [
    ['missing file', join(dir, 'nope.gguf'), 'ERR_GGUF_NOT_FOUND'],
    ['wrong magic', file('magic.gguf', Buffer.concat([Buffer.from('GGML'), bytes.subarray(4, 4096)])), 'ERR_GGUF_INVALID'],
    ['empty file', file('empty.gguf', new Uint8Array(0)), 'ERR_GGUF_INVALID'],
    ['truncated in the header', file('trunc-head.gguf', bytes.subarray(0, 200)), 'ERR_GGUF_INVALID'],
    ['truncated in the tensor data', file('trunc-data.gguf', bytes.subarray(0, bytes.length - 1000)), 'ERR_GGUF_INVALID'],
  ];
  const arch = minimalQwen2({ arch: 'gpt2' });
  cases.push(['unsupported architecture', file('arch.gguf', writeGguf(arch.kv, arch.tensors)), 'ERR_UNSUPPORTED_ARCH']);
  // q5_0 (type 6): blocks of 32 values in 22 bytes.
  const q5 = minimalQwen2({ wtype: 6, wbytes: (n) => (n / 32) * 22 });
  cases.push(['unsupported tensor type', file('type.gguf', writeGguf(q5.kv, q5.tensors)), 'ERR_UNSUPPORTED_TYPE']);
  const bad = minimalQwen2();
  bad.tensors[3] = { ...bad.tensors[3]!, ne: [32, 31], data: new Uint8Array(32 * 31 * 4) };
  cases.push(['tensor shape that does not match the hyperparameters', file('shape.gguf', writeGguf(bad.kv, bad.tensors)), 'ERR_GGUF_INVALID']);
  const huge = minimalQwen2();
  huge.tensors[0] = { ...huge.tensors[0]!, ne: [32, 2 ** 40] };
  cases.push(['absurd tensor shape', file('huge.gguf', writeGguf(huge.kv, huge.tensors)), 'ERR_GGUF_INVALID']);
  const heads = minimalQwen2();
  heads.kv['qwen2.attention.head_count'] = { type: 'u32', value: 0 };
  cases.push(['zero heads', file('heads.gguf', writeGguf(heads.kv, heads.tensors)), 'ERR_GGUF_INVALID']);
  const ok = minimalQwen2();
  cases.push(['a valid minimal model (control)', file('ok.gguf', writeGguf(ok.kv, ok.tensors)), 'OK']);

  for (const [what, path, code] of cases) {
    // Through the library (the TypeScript GGUF reader sees the file first) ...
    if (code === 'OK') {
      const m = await loadModel(path, { device: 'cpu' });
      t.equal(m.info.nLayer, 1, `${what}: loads`);
      m.dispose();
    } else {
      await t.rejects(loadModel(path, { device: 'cpu' }), { code }, `${what}: loadModel rejects with ${code}`);
    }
    // ... and straight through the addon, whose own validation must hold without the TypeScript checks.
    if (code !== 'OK') {
      await t.rejects(binding('cpu').loadModel(path, { device: 'cpu' }), { code }, `${what}: native load rejects with ${code}`);
    }
  }

  // Repeated failing loads: memory stays flat (no leak on the error paths).
  const load = async () => {
    for (const [, path, code] of cases) if (code !== 'OK') await binding('cpu').loadModel(path, { device: 'cpu' }).catch(() => undefined);
  };
  await load();
  const before = process.memoryUsage().rss;
  for (let i = 0; i < 30; i++) await load();
  const grown = (process.memoryUsage().rss - before) / 2 ** 20;
  t.ok(grown < 64, `RSS grew ${grown.toFixed(1)} MiB over 300 failing loads`);
});

t.test('bad calls on a loaded model', async (t) => {
  const dir = tempDir(t);
  const model = await loadModel(await tinyModel(dir, 'f32'), { device: 'cpu' });
  t.teardown(() => model.dispose());
  const ctx = model.createContext({ nSeq: 2, nCtx: 16 });
  t.teardown(() => ctx.dispose());
  await t.rejects(ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.of(151936), nt: 1 }), { code: 'ERR_TOKEN_RANGE' });
  await t.rejects(ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.of(-1), nt: 1 }), { code: 'ERR_TOKEN_RANGE' });
  await t.rejects(ctx.eval({ streams: Int32Array.of(2), tokens: Int32Array.of(1), nt: 1 }), { code: 'ERR_INVALID_ARG' });
  await t.rejects(ctx.eval({ streams: Int32Array.of(0, 0), tokens: Int32Array.of(1, 2), nt: 1 }), { code: 'ERR_INVALID_ARG' });
  await t.rejects(ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.of(1, 2), nt: 1 }), { code: 'ERR_INVALID_ARG' });
  const long = Int32Array.from({ length: 400 }, (_, i) => i + 1);
  await t.rejects(ctx.eval({ streams: Int32Array.of(0), tokens: long, nt: long.length }), { code: 'ERR_CONTEXT_OVERFLOW' });
  await t.rejects(generate(model, { prompts: [Array.from(long)], maxNewTokens: 4, context: ctx }), { code: 'ERR_CONTEXT_OVERFLOW' });
  await t.rejects(generate(model, { prompts: [[1, 2]], maxNewTokens: 4, temperature: -1 }), { code: 'ERR_INVALID_ARG' });
  await t.rejects(ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.of(1), nt: 1, sample: { temperature: 1, topK: 0, topP: 2, seeds: new BigUint64Array(1) } }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => model.createContext({ nSeq: 0 }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => model.createContext({ nCtx: 1e9 }), { code: 'ERR_INVALID_ARG' });
  // The context still works after all of that.
  const r = await ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.of(1, 2, 3), nt: 3, wantLogits: true });
  t.equal(r.logits!.length, 151936);
  await ctx.dispose();
  await t.rejects(ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.of(1), nt: 1 }), { code: 'ERR_DISPOSED' });
});

t.test('CUDA requested where none exists', async (t) => {
  const dir = tempDir(t);
  const file = await tinyModel(dir, 'f32');
  // A machine without CUDA, on every machine: the load runs in a child with CUDA switched off (SQLR1_NO_CUDA=1).
  const index = fileURLToPath(new URL('../../lib/model/index.ts', import.meta.url));
  const script = `import(${JSON.stringify(index)}).then((m) => m.loadModel(${JSON.stringify(file)}, { device: 'cuda' }))` +
    `.then(() => process.stdout.write('loaded'), (e) => process.stdout.write(String(e.code)))`;
  const loader = process.execArgv.filter((a) => a.includes('typescript'));
  const r = spawnSync(process.execPath, [...loader, '--input-type=module', '-e', script], {
    encoding: 'utf8', env: { ...process.env, SQLR1_NO_CUDA: '1' }, timeout: 120_000,
  });
  t.equal(r.stdout, 'ERR_NO_CUDA', r.stderr);
  // The CPU addon itself refuses a CUDA load with the same code.
  await t.rejects(binding('cpu').loadModel(join(dir, 'x.gguf'), { device: 'cuda' }), { code: 'ERR_NO_CUDA' });
});

/** This process's device memory in MiB from nvidia-smi (per process, unlike cudaMemGetInfo), or undefined. */
function processGpuMiB(): number | undefined {
  const r = spawnSync('nvidia-smi', ['--query-compute-apps=pid,used_memory', '--format=csv,noheader,nounits'], { encoding: 'utf8' });
  if (r.status !== 0) return undefined;
  const line = r.stdout.split('\n').map((l) => l.split(',').map((x) => x.trim())).find(([pid]) => Number(pid) === process.pid);
  return line ? Number(line[1]) : 0;
}

t.test('failing loads on each device leave memory as it was', async (t) => {
  for (const device of testDevices()) {
    const dir = tempDir(t);
    const good = await tinyModel(dir, 'f32');
    const trunc = join(dir, 'trunc.gguf');
    writeFileSync(trunc, readFileSync(good).subarray(0, 100_000));
    // Each failing load creates and frees a backend (and, on CUDA, its streams and pools); none may linger.
    await binding(device).loadModel(trunc, { device }).catch(() => undefined);
    const before = device === 'cuda' ? processGpuMiB() : process.memoryUsage().rss / 2 ** 20;
    for (let i = 0; i < 20; i++) await t.rejects(binding(device).loadModel(trunc, { device }), { code: 'ERR_GGUF_INVALID' });
    const after = device === 'cuda' ? processGpuMiB() : process.memoryUsage().rss / 2 ** 20;
    if (before === undefined || after === undefined) {
      t.comment(`${device}: nvidia-smi unavailable; device memory not checked`);
      continue;
    }
    t.ok(after - before < 32, `${device}: memory grew ${(after - before).toFixed(1)} MiB over 20 failing loads`);
  }
});

// GGUF written by another tool (llama.cpp's gguf-py): the same weights load the same way as our own file.
const ggufPy = join(packageRoot, 'native', '.deps', 'llama.cpp', 'gguf-py');
const py = spawnSync('python3', ['-c', 'import numpy, sys; sys.exit(0)'], { env: { ...process.env, PYTHONPATH: ggufPy } });
t.test('a GGUF rewritten by gguf-py loads and computes the same logits', { skip: existsSync(ggufPy) && py.status === 0 ? false : 'python3 with numpy not available' }, async (t) => {
  const dir = tempDir(t);
  const ours = await tinyModel(dir, 'q8_0');
  const theirs = join(dir, 'gguf-py.gguf');
  const script = `
import sys, gguf
r = gguf.GGUFReader(sys.argv[1])
w = gguf.GGUFWriter(sys.argv[2], arch=r.fields['general.architecture'].contents())
for f in r.fields.values():
    if f.name.startswith('GGUF.') or f.name in ('general.architecture', 'general.alignment'): continue
    vt = f.types[0]
    sub = f.types[1] if vt == gguf.GGUFValueType.ARRAY else None
    w.add_key_value(f.name, f.contents(), vt, sub_type=sub)
for t in r.tensors:
    w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
`;
  const r = spawnSync('python3', ['-c', script, ours, theirs], { env: { ...process.env, PYTHONPATH: ggufPy }, encoding: 'utf8' });
  if (r.status !== 0) t.comment(r.stderr);
  t.equal(r.status, 0, 'gguf-py rewrote the model');
  const logits = async (p: string) => {
    const m = await loadModel(p, { device: 'cpu' });
    const ctx = m.createContext({ nSeq: 1, nCtx: 32 });
    const out = await ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.of(9707, 11, 1879), nt: 3, wantLogits: true });
    await ctx.dispose();
    m.dispose();
    return out.logits!;
  };
  t.same(Array.from(await logits(theirs)), Array.from(await logits(ours)), 'identical logits');
});
