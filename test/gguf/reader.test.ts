import t, { type Test } from 'tap';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  GgufType,
  ggufBool,
  ggufInt32Array,
  ggufInteger,
  ggufNumber,
  ggufString,
  ggufStringArray,
  readGgufMetadata,
} from '../../lib/gguf/reader.js';
import { isSqlr1Error } from '../../lib/errors.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

// ------------------------------------------------------------------------------------------------
// A minimal GGUF writer, independent of the reader, for building valid and corrupt files.

type Value =
  | { t: 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'f32' | 'f64'; v: number }
  | { t: 'u64' | 'i64'; v: bigint }
  | { t: 'bool'; v: boolean }
  | { t: 'str'; v: string }
  | { t: 'arr'; of: Exclude<Value['t'], 'arr'>; v: (number | bigint | boolean | string)[] };

const TYPE_ID: Record<string, number> = {
  u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, str: 8, arr: 9, u64: 10, i64: 11, f64: 12,
};

class Writer {
  parts: Buffer[] = [];
  get length(): number {
    return this.parts.reduce((n, b) => n + b.length, 0);
  }
  raw(b: Buffer | Uint8Array): this {
    this.parts.push(Buffer.from(b));
    return this;
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    return this.raw(b);
  }
  u64(v: bigint | number): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    return this.raw(b);
  }
  i64(v: bigint | number): this {
    const b = Buffer.alloc(8);
    b.writeBigInt64LE(BigInt(v));
    return this.raw(b);
  }
  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    return this.u64(b.length).raw(b);
  }
  scalar(t: string, v: number | bigint | boolean | string): this {
    const b = Buffer.alloc(8);
    switch (t) {
      case 'u8': b.writeUInt8(v as number); return this.raw(b.subarray(0, 1));
      case 'i8': b.writeInt8(v as number); return this.raw(b.subarray(0, 1));
      case 'u16': b.writeUInt16LE(v as number); return this.raw(b.subarray(0, 2));
      case 'i16': b.writeInt16LE(v as number); return this.raw(b.subarray(0, 2));
      case 'u32': b.writeUInt32LE(v as number); return this.raw(b.subarray(0, 4));
      case 'i32': b.writeInt32LE(v as number); return this.raw(b.subarray(0, 4));
      case 'f32': b.writeFloatLE(v as number); return this.raw(b.subarray(0, 4));
      case 'f64': b.writeDoubleLE(v as number); return this.raw(b);
      case 'u64': b.writeBigUInt64LE(v as bigint); return this.raw(b);
      case 'i64': b.writeBigInt64LE(v as bigint); return this.raw(b);
      case 'bool': return this.raw(Buffer.from([v ? 1 : 0]));
      case 'str': return this.str(v as string);
    }
    throw new Error(`bad type ${t}`);
  }
  kv(key: string, val: Value): this {
    this.str(key).u32(TYPE_ID[val.t]!);
    if (val.t === 'arr') {
      this.u32(TYPE_ID[val.of]!).u64(val.v.length);
      for (const x of val.v) this.scalar(val.of, x);
      return this;
    }
    return this.scalar(val.t, val.v);
  }
  build(): Buffer {
    return Buffer.concat(this.parts);
  }
}

interface TensorSpec {
  name: string;
  dims: number[];
  type: number; // 0 = f32, 8 = q8_0
  nBytes: number;
}

/** A valid file: header, the given pairs, tensors laid out with the given alignment, then their data. */
function buildGguf(opts: { version?: number; kvs: [string, Value][]; tensors?: TensorSpec[]; alignment?: number }) {
  const w = new Writer();
  const tensors = opts.tensors ?? [];
  const alignment = opts.alignment ?? 32;
  w.raw(Buffer.from('GGUF', 'latin1')).u32(opts.version ?? 3).i64(tensors.length).i64(opts.kvs.length);
  for (const [k, v] of opts.kvs) w.kv(k, v);
  let off = 0;
  const offsets: number[] = [];
  for (const ten of tensors) {
    w.str(ten.name).u32(ten.dims.length);
    for (const d of ten.dims) w.i64(d);
    w.u32(ten.type).u64(off);
    offsets.push(off);
    off += Math.ceil(ten.nBytes / alignment) * alignment;
  }
  const headerEnd = w.length;
  const dataOffset = tensors.length ? Math.ceil(headerEnd / alignment) * alignment : headerEnd;
  w.raw(Buffer.alloc(dataOffset - headerEnd));
  tensors.forEach((ten, i) => {
    const pad = Math.ceil(ten.nBytes / alignment) * alignment;
    const data = Buffer.alloc(pad);
    data.fill(i + 1, 0, ten.nBytes);
    w.raw(data);
  });
  return { bytes: w.build(), dataOffset, offsets, headerEnd };
}

const sampleKvs: [string, Value][] = [
  ['general.architecture', { t: 'str', v: 'qwen2' }],
  ['general.alignment', { t: 'u32', v: 64 }],
  ['test.u8', { t: 'u8', v: 250 }],
  ['test.i8', { t: 'i8', v: -5 }],
  ['test.u16', { t: 'u16', v: 65000 }],
  ['test.i16', { t: 'i16', v: -30000 }],
  ['test.i32', { t: 'i32', v: -123456 }],
  ['test.f32', { t: 'f32', v: 0.5 }],
  ['test.f64', { t: 'f64', v: Math.PI }],
  ['test.u64', { t: 'u64', v: 2n ** 63n + 5n }],
  ['test.i64', { t: 'i64', v: -(2n ** 40n) }],
  ['test.bool', { t: 'bool', v: true }],
  ['test.unicode', { t: 'str', v: 'héllo 世界 😀' }],
  ['test.strs', { t: 'arr', of: 'str', v: ['a', '', 'Ġthe', '<|im_start|>', '😀'] }],
  ['test.i32s', { t: 'arr', of: 'i32', v: [1, -2, 3, 2147483647] }],
  ['test.u8s', { t: 'arr', of: 'u8', v: [0, 255] }],
  ['test.f32s', { t: 'arr', of: 'f32', v: [1.5, -2.25] }],
  ['test.u64s', { t: 'arr', of: 'u64', v: [1n, 2n ** 64n - 1n] }],
  ['test.bools', { t: 'arr', of: 'bool', v: [true, false, true] }],
  ['test.empty', { t: 'arr', of: 'f64', v: [] }],
];
const sampleTensors: TensorSpec[] = [
  { name: 'token_embd.weight', dims: [64, 3], type: 8, nBytes: 2 * 34 * 3 }, // q8_0: 64/32 blocks x 34 bytes x 3 rows
  { name: 'output_norm.weight', dims: [7], type: 0, nBytes: 28 },
  { name: 'scalar', dims: [], type: 0, nBytes: 4 },
];

let dir = '';
t.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'sqlr1-gguf-'));
});
t.teardown(async () => {
  await rm(dir, { recursive: true, force: true });
});

let fileNo = 0;
async function writeTemp(bytes: Buffer | Uint8Array): Promise<string> {
  const p = join(dir, `f${fileNo++}.gguf`);
  await writeFile(p, bytes);
  return p;
}

async function expectCode(t: Test, path: string, code: string, pattern?: RegExp): Promise<void> {
  try {
    await readGgufMetadata(path);
    t.fail(`expected ${code}, but the file was accepted`);
  } catch (e) {
    t.ok(isSqlr1Error(e), `throws Sqlr1Error (got ${String(e)})`);
    t.equal((e as { code?: string }).code, code, (e as Error).message);
    if (pattern) t.match((e as Error).message, pattern);
  }
}

t.test('reads every value type, tensor infos and the aligned data offset', async (t) => {
  const { bytes, dataOffset } = buildGguf({ kvs: sampleKvs, tensors: sampleTensors, alignment: 64 });
  const md = await readGgufMetadata(await writeTemp(bytes));
  t.equal(md.version, 3);
  t.equal(md.fileSize, bytes.length);
  t.same([...md.kv.keys()], sampleKvs.map(([k]) => k), 'keys in file order');
  t.equal(md.alignment, 64);
  t.equal(md.dataOffset, dataOffset);
  t.equal(md.dataOffset % 64, 0);
  t.equal(ggufString(md, 'general.architecture'), 'qwen2');
  t.equal(ggufInteger(md, 'test.u8'), 250);
  t.equal(ggufInteger(md, 'test.i8'), -5);
  t.equal(ggufInteger(md, 'test.u16'), 65000);
  t.equal(ggufInteger(md, 'test.i16'), -30000);
  t.equal(ggufInteger(md, 'test.i32'), -123456);
  t.equal(ggufNumber(md, 'test.f32'), 0.5);
  t.equal(ggufNumber(md, 'test.f64'), Math.PI);
  t.equal(md.kv.get('test.u64')!.value, 2n ** 63n + 5n);
  t.equal(ggufInteger(md, 'test.i64'), -(2 ** 40));
  t.equal(ggufBool(md, 'test.bool'), true);
  t.equal(ggufString(md, 'test.unicode'), 'héllo 世界 😀');
  t.same(ggufStringArray(md, 'test.strs'), ['a', '', 'Ġthe', '<|im_start|>', '😀']);
  t.same(Array.from(ggufInt32Array(md, 'test.i32s')!), [1, -2, 3, 2147483647]);
  t.same(Array.from(ggufInt32Array(md, 'test.u8s')!), [0, 255]);
  t.same(Array.from(md.kv.get('test.f32s')!.value as Float32Array), [1.5, -2.25]);
  t.same(Array.from(md.kv.get('test.u64s')!.value as BigUint64Array), [1n, 2n ** 64n - 1n]);
  t.same(md.kv.get('test.bools')!.value, [true, false, true]);
  t.equal(md.kv.get('test.strs')!.arrayType, GgufType.STRING);
  t.equal((md.kv.get('test.empty')!.value as Float64Array).length, 0);
  t.equal(ggufString(md, 'absent'), undefined, 'absent keys are undefined');

  t.equal(md.tensors.length, 3);
  const [emb, norm, scalar] = md.tensors;
  t.same(emb!.dims, [64, 3]);
  t.equal(emb!.typeName, 'q8_0');
  t.equal(emb!.nElements, 192);
  t.equal(emb!.nBytes, 204);
  t.equal(emb!.offset, 0);
  t.equal(norm!.offset, 256, 'second tensor starts after the first, padded to 64');
  t.equal(norm!.fileOffset, dataOffset + 256);
  t.same(scalar!.dims, []);
  t.equal(scalar!.nElements, 1);
  t.equal(bytes[norm!.fileOffset], 2, 'fileOffset points at the tensor data');
  t.equal(md.dataSize, 256 + 64 + 64);
});

t.test('accessors reject wrong types with the key and both types in the message', async (t) => {
  const md = await readGgufMetadata(await writeTemp(buildGguf({ kvs: sampleKvs }).bytes));
  t.throws(() => ggufString(md, 'test.u8'), { code: 'ERR_GGUF_INVALID', message: /test\.u8.*string.*uint8/ });
  t.throws(() => ggufInteger(md, 'test.f32'), { code: 'ERR_GGUF_INVALID' });
  t.throws(() => ggufInteger(md, 'test.u64'), { code: 'ERR_GGUF_INVALID', message: /test\.u64/ }, 'unsafe u64');
  t.throws(() => ggufStringArray(md, 'test.i32s'), { code: 'ERR_GGUF_INVALID', message: /array of int32/ });
  t.throws(() => ggufInt32Array(md, 'test.strs'), { code: 'ERR_GGUF_INVALID' });
  t.throws(() => ggufBool(md, 'test.u8'), { code: 'ERR_GGUF_INVALID' });
});

t.test('missing file and non-file paths', async (t) => {
  await expectCode(t, join(dir, 'does-not-exist.gguf'), 'ERR_GGUF_NOT_FOUND', /does-not-exist/);
  const sub = join(dir, 'a-directory');
  await mkdir(sub);
  await expectCode(t, sub, 'ERR_GGUF_INVALID');
});

t.test('wrong magic', async (t) => {
  const { bytes } = buildGguf({ kvs: sampleKvs });
  const bad = Buffer.from(bytes);
  bad.write('GGML', 0, 'latin1');
  await expectCode(t, await writeTemp(bad), 'ERR_GGUF_INVALID', /expected magic 'GGUF'.*received 47 47 4d 4c/);
  await expectCode(t, await writeTemp(Buffer.from('GG')), 'ERR_GGUF_INVALID', /truncated/);
  await expectCode(t, await writeTemp(Buffer.alloc(0)), 'ERR_GGUF_INVALID', /truncated/);
});

t.test('bad version', async (t) => {
  for (const [v, re] of [
    [1, /version 2 or 3, received 1.*v1/],
    [0, /received 0/],
    [4, /received 4/],
    [0x03000000, /big-endian/],
  ] as const) {
    const { bytes } = buildGguf({ version: v, kvs: sampleKvs });
    await expectCode(t, await writeTemp(bytes), 'ERR_GGUF_INVALID', re);
  }
  const v2 = buildGguf({ version: 2, kvs: sampleKvs, tensors: sampleTensors, alignment: 64 });
  t.equal((await readGgufMetadata(await writeTemp(v2.bytes))).version, 2, 'version 2 is accepted');
});

t.test('truncated at every byte of header, pairs, tensor infos and tensor data', async (t) => {
  const { bytes, dataOffset } = buildGguf({ kvs: sampleKvs, tensors: sampleTensors, alignment: 64 });
  const last = sampleTensors.at(-1)!;
  const md = await readGgufMetadata(await writeTemp(bytes));
  const end = dataOffset + md.tensors.at(-1)!.offset + last.nBytes; // everything after is padding
  // every byte up to the data section, then the start, middle and last byte of each tensor
  const cuts: number[] = [];
  for (let len = 0; len < dataOffset; len++) cuts.push(len);
  for (const ten of md.tensors) cuts.push(ten.fileOffset, ten.fileOffset + (ten.nBytes >> 1), ten.fileOffset + ten.nBytes - 1);
  t.equal(cuts.at(-1), end - 1);
  let rejected = 0;
  const messages = new Set<string>();
  for (const len of cuts) {
    const p = await writeTemp(bytes.subarray(0, len));
    try {
      await readGgufMetadata(p);
      t.fail(`prefix of ${len}/${bytes.length} bytes was accepted`);
    } catch (e) {
      if (isSqlr1Error(e, 'ERR_GGUF_INVALID') && /truncated|bounded by|expected at most/.test(e.message)) rejected++;
      else t.fail(`prefix of ${len} bytes: unexpected error ${String(e)}`);
      messages.add((e as Error).message.replace(/.*: /, '').slice(0, 30));
    }
    await rm(p);
  }
  t.equal(rejected, cuts.length, `all ${cuts.length} truncation points rejected with ERR_GGUF_INVALID`);
  t.ok(messages.size > 5, 'messages say what was being read');
});

t.test('absurd counts and lengths are bounded by the file size', async (t) => {
  // array with 2^40 elements
  const w1 = new Writer().raw(Buffer.from('GGUF')).u32(3).i64(0).i64(1);
  w1.str('tokenizer.ggml.tokens').u32(9).u32(8).u64(2n ** 40n);
  await expectCode(t, await writeTemp(w1.build()), 'ERR_GGUF_INVALID', /element count of array 'tokenizer\.ggml\.tokens' is 1099511627776/);
  // array of i32 claiming more elements than bytes left
  const w2 = new Writer().raw(Buffer.from('GGUF')).u32(3).i64(0).i64(1);
  w2.str('a').u32(9).u32(5).u64(100).u32(1).u32(2);
  await expectCode(t, await writeTemp(w2.build()), 'ERR_GGUF_INVALID', /element count.*is 100, expected at most 2/);
  // string length 2^63
  const w3 = new Writer().raw(Buffer.from('GGUF')).u32(3).i64(0).i64(1);
  w3.u64(2n ** 63n).raw(Buffer.from('key')).raw(Buffer.alloc(64));
  await expectCode(t, await writeTemp(w3.build()), 'ERR_GGUF_INVALID', /key of key\/value pair 0 length is 9223372036854775808/);
  // string element length beyond the file
  const w4 = new Writer().raw(Buffer.from('GGUF')).u32(3).i64(0).i64(1);
  w4.str('s').u32(9).u32(8).u64(2).str('ok').u64(1000).raw(Buffer.from('xy'));
  await expectCode(t, await writeTemp(w4.build()), 'ERR_GGUF_INVALID', /length is 1000/);
  // key/value and tensor counts
  const w5 = new Writer().raw(Buffer.from('GGUF')).u32(3).i64(0).i64(2n ** 62n);
  await expectCode(t, await writeTemp(w5.build()), 'ERR_GGUF_INVALID', /key\/value count is 4611686018427387904/);
  const w6 = new Writer().raw(Buffer.from('GGUF')).u32(3).i64(-1).i64(0);
  await expectCode(t, await writeTemp(w6.build()), 'ERR_GGUF_INVALID', /tensor count is -1/);
  const w7 = new Writer().raw(Buffer.from('GGUF')).u32(3).i64(1000).i64(0).raw(Buffer.alloc(100));
  await expectCode(t, await writeTemp(w7.build()), 'ERR_GGUF_INVALID', /tensor count is 1000/);
});

t.test('malformed pairs and tensor infos', async (t) => {
  const header = (nTensors: number, nKv: number) =>
    new Writer().raw(Buffer.from('GGUF')).u32(3).i64(nTensors).i64(nKv);
  await expectCode(t, await writeTemp(header(0, 1).str('k').u32(13).u32(0).build()), 'ERR_GGUF_INVALID', /key 'k' has GGUF type 13/);
  await expectCode(t, await writeTemp(header(0, 1).str('k').u32(9).u32(9).u64(0).build()), 'ERR_GGUF_INVALID', /nested arrays/);
  await expectCode(t, await writeTemp(header(0, 1).str('').u32(4).u32(0).build()), 'ERR_GGUF_INVALID', /empty/);
  await expectCode(t, await writeTemp(header(0, 2).kv('k', { t: 'u8', v: 1 }).kv('k', { t: 'u8', v: 2 }).build()), 'ERR_GGUF_INVALID', /duplicate key 'k'/);
  await expectCode(t, await writeTemp(header(0, 1).str('b').u32(7).raw(Buffer.from([2])).build()), 'ERR_GGUF_INVALID', /bool/);
  await expectCode(t, await writeTemp(header(0, 1).kv('general.alignment', { t: 'u32', v: 48 }).build()), 'ERR_GGUF_INVALID', /power of 2/);
  await expectCode(t, await writeTemp(header(0, 1).kv('general.alignment', { t: 'u64', v: 32n }).build()), 'ERR_GGUF_INVALID', /uint32/);

  const tensor = (name: string, dims: number[], type: number, offset: number) => {
    const w = header(1, 0).str(name).u32(dims.length);
    for (const d of dims) w.i64(d);
    return w.u32(type).u64(offset).raw(Buffer.alloc(4096)).build();
  };
  await expectCode(t, await writeTemp(tensor('w', [4, 1, 1, 1, 1], 0, 0)), 'ERR_GGUF_INVALID', /5 dimensions/);
  await expectCode(t, await writeTemp(tensor('w', [4], 4, 0)), 'ERR_GGUF_INVALID', /ggml type 4/);
  await expectCode(t, await writeTemp(tensor('w', [4], 99, 0)), 'ERR_GGUF_INVALID', /ggml type 99/);
  await expectCode(t, await writeTemp(tensor('w', [33], 2, 0)), 'ERR_GGUF_INVALID', /multiple of the block size 32/);
  await expectCode(t, await writeTemp(tensor('w', [-1], 0, 0)), 'ERR_GGUF_INVALID', /dimension 0 is -1/);
  await expectCode(t, await writeTemp(tensor('w', [4], 0, 16)), 'ERR_GGUF_INVALID', /offset 16, expected 0/);
  await expectCode(t, await writeTemp(tensor('w', [2 ** 30, 2 ** 30], 0, 0)), 'ERR_GGUF_INVALID', /more than 9007199254740991 elements/);
  await expectCode(t, await writeTemp(tensor('w', [2 ** 20, 2 ** 20], 0, 0)), 'ERR_GGUF_INVALID', /truncated: tensor 'w'/);
  await expectCode(t, await writeTemp(tensor('x'.repeat(64), [4], 0, 0)), 'ERR_GGUF_INVALID', /fewer than 64/);
  const dup = header(2, 0);
  for (let i = 0; i < 2; i++) dup.str('w').u32(1).i64(8).u32(0).u64(i * 32);
  await expectCode(t, await writeTemp(dup.raw(Buffer.alloc(128)).build()), 'ERR_GGUF_INVALID', /duplicate tensor name 'w'/);
});

t.test("reads llama.cpp's Qwen2 vocabulary file", async (t) => {
  const vocab = join(repoRoot, 'native/.deps/llama.cpp/models/ggml-vocab-qwen2.gguf');
  if (!existsSync(vocab)) {
    t.fail(`llama.cpp bundle not found at ${vocab}: run \`node scripts/fetch-ggml.mjs\` first`);
    return;
  }
  const md = await readGgufMetadata(vocab);
  t.equal(ggufString(md, 'tokenizer.ggml.model'), 'gpt2');
  t.equal(ggufString(md, 'tokenizer.ggml.pre'), 'qwen2');
  const tokens = ggufStringArray(md, 'tokenizer.ggml.tokens')!;
  t.equal(tokens.length, ggufInt32Array(md, 'tokenizer.ggml.token_type')!.length);
  t.ok(tokens.length > 150000);
  t.equal(md.tensors.length, 0);
  t.equal(md.dataOffset, md.fileSize, 'a vocabulary-only file ends after its metadata');
});
