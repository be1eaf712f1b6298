/**
 * The optimizer-state file (AdamW moments, step count and lr as GGUF, apart from the adapter): a save/load round
 * trip restores the moments bit for bit, so the next step after resuming equals the step without the break; bad
 * files fail with a code and leave the store exactly as it was; saves leave no temporary file behind.
 */
import t from 'tap';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AdamW, ParamStore } from '../../lib/train/index.js';
import { readGgufMetadata, ggufInteger, ggufNumber, ggufString } from '../../lib/gguf/reader.js';
import { writeGguf } from '../helpers/gguf-writer.js';
import { tempDir } from '../helpers/native.js';
import { setGrads, uniform } from './fixtures/ref.js';

const SHAPES: Record<string, number[]> = { w: [7, 13], b: [13], s: [], untouched: [5] };
const SEED = 777;

function store(t: { teardown(fn: () => void): void }, shapes: Record<string, number[]> = SHAPES, order?: string[]): ParamStore {
  const s = new ParamStore({ device: 'cpu', threads: 1 });
  t.teardown(() => s.dispose());
  for (const name of order ?? Object.keys(shapes)) {
    const shape = shapes[name]!;
    s.add(name, shape, uniform(shape.reduce((a, b) => a * b, 1), SEED + name.length));
  }
  return s;
}

function gradsFor(step: number): Record<string, Float32Array> {
  return { w: uniform(91, SEED + 10 * step, -3, 3), b: uniform(13, SEED + 10 * step + 1, -0.01, 0.01), s: uniform(1, SEED + 10 * step + 2) };
}

/** Every parameter's value and moments as raw bytes, for bit-exact comparisons. */
function snapshot(s: ParamStore): Record<string, { value: Buffer; m: Buffer; v: Buffer }> {
  const out: Record<string, { value: Buffer; m: Buffer; v: Buffer }> = {};
  const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  for (const name of s.names()) {
    const { m, v } = s.moments(name);
    out[name] = { value: bytes(s.get(name)), m: bytes(m), v: bytes(v) };
  }
  return out;
}

function sameBits(t: { ok(ok: boolean, msg: string): unknown }, a: Buffer, b: Buffer, msg: string): void {
  t.ok(a.length === b.length && a.equals(b), msg);
}

/** Trains a store for three steps (the last with a scheduled lr) and saves its optimizer state. */
async function trainAndSave(s: ParamStore, path: string): Promise<AdamW> {
  const opt = new AdamW(s, { lr: 0.01, weightDecay: 0.1 });
  for (let step = 1; step <= 3; step++) {
    await setGrads(s, gradsFor(step));
    await opt.step(step === 3 ? { lr: 0.0123456789 } : {});
    opt.zeroGrad();
  }
  await opt.save(path);
  return opt;
}

t.test('save then load restores moments, step and lr bit for bit, and the next step matches', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'nested', 'run', 'optimizer.gguf');  // save creates the folders
  const s1 = store(t);
  const opt1 = await trainAndSave(s1, path);
  t.same(readdirSync(join(dir, 'nested', 'run')), ['optimizer.gguf'], 'no temporary file left next to the saved one');

  const md = await readGgufMetadata(path);
  t.equal(ggufString(md, 'general.type'), 'optimizer');
  t.equal(ggufString(md, 'sqlr1.optimizer.kind'), 'adamw');
  t.equal(ggufInteger(md, 'sqlr1.optimizer.step'), 3);
  t.equal(ggufNumber(md, 'sqlr1.optimizer.lr'), 0.0123456789, 'the lr is stored as a float64');
  t.equal(ggufInteger(md, 'sqlr1.optimizer.count'), 4);
  t.same(md.tensors.map((x) => x.name).sort(), Object.keys(SHAPES).flatMap((n) => [`${n}.adam_m`, `${n}.adam_v`]).sort());
  t.same(md.tensors.find((x) => x.name === 'w.adam_m')!.dims, [13, 7], 'moments keep the parameter shape (ggml order)');

  // A fresh store with the same parameters added in another order, and an optimizer with another lr.
  const s2 = store(t, SHAPES, ['untouched', 's', 'b', 'w']);
  for (const name of s1.names()) s2.set(name, s1.get(name));
  const opt2 = new AdamW(s2, { lr: 0.5, weightDecay: 0.1 });
  await opt2.load(path);
  t.same(opt2.state(), { step: 3, lr: 0.0123456789 }, 'step and lr restored (the file lr replaces the current one)');
  t.same(opt2.state(), opt1.state());
  const before1 = snapshot(s1), loaded = snapshot(s2);
  for (const name of Object.keys(SHAPES)) {
    sameBits(t, loaded[name]!.m, before1[name]!.m, `${name}: first moment bit-identical`);
    sameBits(t, loaded[name]!.v, before1[name]!.v, `${name}: second moment bit-identical`);
  }
  t.ok(before1.w!.m.some((x) => x !== 0) && before1.w!.v.some((x) => x !== 0), 'the saved moments are not trivially zero');

  // One more step on both; a third optimizer that skipped the load shows the comparison can tell them apart.
  const s3 = store(t);
  for (const name of s1.names()) s3.set(name, s1.get(name));
  const opt3 = new AdamW(s3, { lr: 0.0123456789, weightDecay: 0.1 });
  for (const [s, opt] of [[s1, opt1], [s2, opt2], [s3, opt3]] as const) {
    await setGrads(s, gradsFor(4));
    await opt.step();
    opt.zeroGrad();
  }
  t.equal(opt2.stepCount, 4);
  const after1 = snapshot(s1), after2 = snapshot(s2), after3 = snapshot(s3);
  for (const name of Object.keys(SHAPES)) {
    sameBits(t, after2[name]!.value, after1[name]!.value, `${name}: parameters after the next step bit-identical`);
    sameBits(t, after2[name]!.m, after1[name]!.m, `${name}: moments after the next step bit-identical`);
  }
  t.notOk(after3.w!.value.equals(after1.w!.value), 'without the loaded state the next step differs');
});

t.test('bad files are rejected with a code and leave the store untouched', async (t) => {
  const dir = tempDir(t);
  const good = join(dir, 'good.gguf');
  await trainAndSave(store(t), good);

  const target = store(t);
  for (const [k, name] of Object.keys(SHAPES).entries()) {
    const n = SHAPES[name]!.reduce((a, b) => a * b, 1);
    target.setMoments(name, { m: uniform(n, 1000 + k), v: uniform(n, 2000 + k, 0, 1) });
  }
  const opt = new AdamW(target, { lr: 0.02, weightDecay: 0.1 });
  opt.loadState({ step: 9, lr: 0.03 });
  const before = snapshot(target);

  const saveFrom = async (name: string, shapes: Record<string, number[]>): Promise<string> => {
    const path = join(dir, `${name}.gguf`);
    await trainAndSave(store(t, shapes), path);
    return path;
  };
  const bytes = readFileSync(good);
  const write = (name: string, data: Uint8Array | string): string => {
    const path = join(dir, name);
    writeFileSync(path, data);
    return path;
  };
  const f32 = (n: number) => new Uint8Array(new Float32Array(n).buffer);
  const kv = {
    'general.type': { type: 'str', value: 'optimizer' },
    'sqlr1.optimizer.kind': { type: 'str', value: 'adamw' },
    'sqlr1.optimizer.step': { type: 'u32', value: 3 },
    'sqlr1.optimizer.lr': { type: 'f32', value: 0.01 },
    'sqlr1.optimizer.count': { type: 'u32', value: 4 },
  } as const;
  const tensors = Object.entries(SHAPES).flatMap(([name, shape]) => {
    const ne = shape.length ? [...shape].reverse() : [1];
    const n = shape.reduce((a, b) => a * b, 1);
    return [{ name: `${name}.adam_m`, ne, type: 0, data: f32(n) }, { name: `${name}.adam_v`, ne, type: 0, data: f32(n) }];
  });
  // The hand-written file passes as long as nothing is broken (so the broken variants below fail for their reason).
  const handWritten = write('hand.gguf', writeGguf(kv, tensors));

  const cases: Array<[string, string, string, RegExp]> = [
    ['missing file', join(dir, 'nope.gguf'), 'ERR_GGUF_NOT_FOUND', /not found/],
    ['not a GGUF file', write('text.gguf', 'hello, this is not a GGUF file at all'), 'ERR_STATE_INVALID', /not a GGUF file/],
    ['empty file', write('empty.gguf', ''), 'ERR_STATE_INVALID', /not a GGUF file/],
    ['different shape', await saveFrom('transposed', { ...SHAPES, w: [13, 7] }), 'ERR_STATE_INVALID', /'w\.adam_m'.*shape \[13, 7\].*'w' has shape \[7, 13\]/],
    ['fewer dimensions', await saveFrom('flat', { ...SHAPES, w: [91] }), 'ERR_STATE_INVALID', /shape \[91\].*\[7, 13\]/],
    ['the store has a parameter the file lacks', await saveFrom('missing', { w: SHAPES.w!, b: SHAPES.b!, s: SHAPES.s! }), 'ERR_STATE_INVALID', /no tensor 'untouched\.adam_m' for the store's parameter 'untouched'/],
    ['the file has a parameter the store lacks', await saveFrom('extra', { ...SHAPES, extra: [2] }), 'ERR_STATE_INVALID', /tensor 'extra\.adam_(m|v)', which is not a moment/],
    ['truncated data', write('truncated.gguf', bytes.subarray(0, bytes.length - 40)), 'ERR_STATE_INVALID', /truncated/],
    ['truncated header', write('header.gguf', bytes.subarray(0, 48)), 'ERR_STATE_INVALID', /could not be parsed/],
    ['another kind of GGUF', write('adapter.gguf', writeGguf({ ...kv, 'general.type': { type: 'str', value: 'adapter' } }, tensors)), 'ERR_STATE_INVALID', /expected general\.type 'optimizer'.*found 'adapter'/],
    ['f16 moments', write('f16.gguf', writeGguf(kv, tensors.map((x) => (x.name === 's.adam_v' ? { ...x, type: 1, data: new Uint8Array(2) } : x)))), 'ERR_STATE_INVALID', /'s\.adam_v'.*should be f32, found f16/],
    ['negative lr', write('nolr.gguf', writeGguf({ ...kv, 'sqlr1.optimizer.lr': { type: 'f32', value: -1 } }, tensors)), 'ERR_STATE_INVALID', /lr must be a positive/],
    ['count disagrees', write('count.gguf', writeGguf({ ...kv, 'sqlr1.optimizer.count': { type: 'u32', value: 5 } }, tensors)), 'ERR_STATE_INVALID', /count says 5/],
  ];
  for (const [what, path, code, msg] of cases) {
    await t.rejects(opt.load(path), { code, message: msg }, `${what}: ${code}`);
    await t.rejects(target.loadState(path), { code }, `${what}: ParamStore.loadState too`);
    const now = snapshot(target);
    t.ok(Object.keys(before).every((n) => now[n]!.m.equals(before[n]!.m) && now[n]!.v.equals(before[n]!.v) && now[n]!.value.equals(before[n]!.value)),
      `${what}: the store is unchanged`);
    t.same(opt.state(), { step: 9, lr: 0.03 }, `${what}: the optimizer's step and lr are unchanged`);
  }

  // The control: the hand-written file and the good file do load (zeros and trained moments respectively).
  t.same(await target.loadState(handWritten), { step: 3, lr: Math.fround(0.01) });
  t.same(Array.from(target.moments('w').v), Array.from(new Float32Array(91)));
  await opt.load(good);
  t.same(opt.state(), { step: 3, lr: 0.0123456789 });
});

t.test('saves leave no temporary file, even when they fail; argument checks', async (t) => {
  const dir = tempDir(t);
  const s = store(t);
  const opt = new AdamW(s, { lr: 0.01 });
  for (let i = 0; i < 3; i++) await opt.save(join(dir, 'state.gguf'));  // overwriting goes through the rename too
  t.same(readdirSync(dir), ['state.gguf']);

  // The target is a directory: the temporary file is written, the rename fails and the file is removed.
  mkdirSync(join(dir, 'taken'));
  await t.rejects(opt.save(join(dir, 'taken')), { code: 'ERR_INVALID_ARG', message: /could not rename/ });
  t.same(readdirSync(dir).sort(), ['state.gguf', 'taken'], 'no .tmp file after a failed rename');
  t.same(readdirSync(join(dir, 'taken')), []);

  // Calls on the store run in submission order (the device's queue): a moment written after a queued save is not
  // in that file, and a read after a queued load sees what was loaded.
  const native = s.handle();
  const m0 = native.getMoment('b', 'm');
  const pending = native.saveState(join(dir, 'queued.gguf'), { step: 1, lr: 0.1 });
  native.setMoment('b', 'm', new Float32Array(m0.length).fill(7));
  await pending;
  t.ok(native.getMoment('b', 'm').every((x) => x === 7), 'the moment written after the queued save');
  const loading = native.loadState(join(dir, 'queued.gguf'));
  t.same(native.getMoment('b', 'm'), m0, 'a read after a queued load sees the saved moment, not the one written after the save');
  t.same(await loading, { step: 1, lr: 0.1 });

  await t.rejects(s.saveState(join(dir, 'a.gguf'), { step: -1, lr: 0.1 }), { code: 'ERR_INVALID_ARG' });
  await t.rejects(s.saveState(join(dir, 'a.gguf'), { step: 1.5, lr: 0.1 }), { code: 'ERR_INVALID_ARG' });
  await t.rejects(s.saveState(join(dir, 'a.gguf'), { step: 1, lr: 0 }), { code: 'ERR_INVALID_ARG' });
  await t.rejects(s.saveState('', { step: 1, lr: 0.1 }), { code: 'ERR_INVALID_ARG' });
  // Straight to the addon, past the TypeScript checks.
  t.throws(() => native.saveState(join(dir, 'a.gguf'), { step: -1, lr: 0.1 }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => native.saveState(join(dir, 'a.gguf'), { step: 1, lr: NaN }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => native.saveState(join(dir, 'a.gguf'), null as unknown as { step: number; lr: number }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => native.loadState(42 as unknown as string), { code: 'ERR_INVALID_ARG' });
  t.same(readdirSync(dir).sort(), ['queued.gguf', 'state.gguf', 'taken']);

  // The file's lr must also suit the loading optimizer's weight decay (lr * weightDecay <= 1).
  const big = new AdamW(s, { lr: 0.1, weightDecay: 1 });
  await s.saveState(join(dir, 'big-lr.gguf'), { step: 2, lr: 5 });
  await t.rejects(big.load(join(dir, 'big-lr.gguf')), { code: 'ERR_STATE_INVALID', message: /weightDecay/ });
  t.same(big.state(), { step: 0, lr: 0.1 });

  s.dispose();
  await t.rejects(opt.save(join(dir, 'gone.gguf')), { code: 'ERR_DISPOSED' });
});
