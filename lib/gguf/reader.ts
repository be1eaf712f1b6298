/**
 * A pure-TypeScript GGUF metadata reader: header, key/value pairs and tensor infos, read incrementally through a
 * file handle. Tensor data is never read. Every count and length is validated against the file size before
 * anything is allocated, so a corrupt or hostile file fails with `ERR_GGUF_INVALID` instead of exhausting memory.
 *
 * Layout (GGUF v2/v3, little-endian; see ggml/src/gguf.cpp):
 *   magic "GGUF" | u32 version | i64 n_tensors | i64 n_kv
 *   n_kv x { string key | u32 type | value }            value of ARRAY = u32 elem_type | u64 n | n x elem
 *   n_tensors x { string name | u32 n_dims | n_dims x i64 ne | u32 ggml_type | u64 offset }
 *   padding to `general.alignment` (default 32) | tensor data
 * where string = u64 byte length | UTF-8 bytes.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { Sqlr1Error } from '../errors.js';

/** GGUF value types (gguf.h `enum gguf_type`). */
export const GgufType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;
export type GgufType = (typeof GgufType)[keyof typeof GgufType];

const GGUF_TYPE_NAMES: readonly string[] = [
  'uint8', 'int8', 'uint16', 'int16', 'uint32', 'int32', 'float32', 'bool', 'string', 'array', 'uint64', 'int64',
  'float64',
];

/** Byte size of a scalar of each type; strings are variable (minimum 8: the length prefix). */
const GGUF_TYPE_SIZE: readonly number[] = [1, 1, 2, 2, 4, 4, 4, 1, 8, 0, 8, 8, 8];

/** Name of a GGUF value type, for messages. */
export function ggufTypeName(type: number): string {
  return GGUF_TYPE_NAMES[type] ?? `unknown(${type})`;
}

/** A scalar GGUF value: 64-bit integers are bigints so that no precision is lost. */
export type GgufScalar = number | bigint | boolean | string;

/** An array GGUF value, stored compactly by element type. */
export type GgufArrayValue =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array
  | boolean[]
  | string[];

/** One key/value pair. `arrayType` is set when `type` is ARRAY. */
export interface GgufKv {
  readonly key: string;
  readonly type: GgufType;
  readonly arrayType?: GgufType;
  readonly value: GgufScalar | GgufArrayValue;
}

/** ggml tensor types (ggml.h `enum ggml_type`) with block size (elements) and block byte size. */
interface GgmlTypeTraits {
  readonly name: string;
  readonly blockSize: number;
  readonly typeSize: number;
}

// Sizes are sizeof(block_*) from ggml-common.h; removed types (4, 5, 31-33, 36-38) are absent and rejected.
const GGML_TYPES: Readonly<Record<number, GgmlTypeTraits>> = {
  0: { name: 'f32', blockSize: 1, typeSize: 4 },
  1: { name: 'f16', blockSize: 1, typeSize: 2 },
  2: { name: 'q4_0', blockSize: 32, typeSize: 18 },
  3: { name: 'q4_1', blockSize: 32, typeSize: 20 },
  6: { name: 'q5_0', blockSize: 32, typeSize: 22 },
  7: { name: 'q5_1', blockSize: 32, typeSize: 24 },
  8: { name: 'q8_0', blockSize: 32, typeSize: 34 },
  9: { name: 'q8_1', blockSize: 32, typeSize: 36 },
  10: { name: 'q2_K', blockSize: 256, typeSize: 84 },
  11: { name: 'q3_K', blockSize: 256, typeSize: 110 },
  12: { name: 'q4_K', blockSize: 256, typeSize: 144 },
  13: { name: 'q5_K', blockSize: 256, typeSize: 176 },
  14: { name: 'q6_K', blockSize: 256, typeSize: 210 },
  15: { name: 'q8_K', blockSize: 256, typeSize: 292 },
  16: { name: 'iq2_xxs', blockSize: 256, typeSize: 66 },
  17: { name: 'iq2_xs', blockSize: 256, typeSize: 74 },
  18: { name: 'iq3_xxs', blockSize: 256, typeSize: 98 },
  19: { name: 'iq1_s', blockSize: 256, typeSize: 50 },
  20: { name: 'iq4_nl', blockSize: 32, typeSize: 18 },
  21: { name: 'iq3_s', blockSize: 256, typeSize: 110 },
  22: { name: 'iq2_s', blockSize: 256, typeSize: 82 },
  23: { name: 'iq4_xs', blockSize: 256, typeSize: 136 },
  24: { name: 'i8', blockSize: 1, typeSize: 1 },
  25: { name: 'i16', blockSize: 1, typeSize: 2 },
  26: { name: 'i32', blockSize: 1, typeSize: 4 },
  27: { name: 'i64', blockSize: 1, typeSize: 8 },
  28: { name: 'f64', blockSize: 1, typeSize: 8 },
  29: { name: 'iq1_m', blockSize: 256, typeSize: 56 },
  30: { name: 'bf16', blockSize: 1, typeSize: 2 },
  34: { name: 'tq1_0', blockSize: 256, typeSize: 54 },
  35: { name: 'tq2_0', blockSize: 256, typeSize: 66 },
  39: { name: 'mxfp4', blockSize: 32, typeSize: 17 },
  40: { name: 'nvfp4', blockSize: 64, typeSize: 36 },
  41: { name: 'q1_0', blockSize: 128, typeSize: 18 },
  42: { name: 'q2_0', blockSize: 64, typeSize: 18 },
};

/** Name of a ggml tensor type (e.g. 'q4_0'), or undefined for an unknown id. */
export function ggmlTypeName(type: number): string | undefined {
  return GGML_TYPES[type]?.name;
}

/** One tensor's description. `offset` is relative to the data section; `fileOffset` is absolute. */
export interface GgufTensorInfo {
  readonly name: string;
  /** ggml order: dims[0] is the contiguous (row) dimension. */
  readonly dims: readonly number[];
  readonly type: number;
  readonly typeName: string;
  readonly offset: number;
  readonly fileOffset: number;
  readonly nElements: number;
  readonly nBytes: number;
}

export interface GgufMetadata {
  readonly path: string;
  readonly version: number;
  readonly fileSize: number;
  /** Key/value pairs in file order. */
  readonly kv: ReadonlyMap<string, GgufKv>;
  readonly tensors: readonly GgufTensorInfo[];
  /** `general.alignment`, default 32. */
  readonly alignment: number;
  /** Absolute file offset of the tensor data section. */
  readonly dataOffset: number;
  /** Size of the data section (each tensor padded to the alignment). */
  readonly dataSize: number;
}

export const GGUF_DEFAULT_ALIGNMENT = 32;
/** Largest number of dimensions of a ggml tensor (GGML_MAX_DIMS). */
const GGML_MAX_DIMS = 4;
/** Tensor names are stored in char[64] including the terminator (GGML_MAX_NAME). */
const GGML_MAX_NAME = 64;
/** Read granularity. Large enough that the vocabulary arrays take a handful of reads. */
const CHUNK_SIZE = 1 << 20;

function invalid(path: string, what: string): Sqlr1Error {
  return new Sqlr1Error('ERR_GGUF_INVALID', `invalid GGUF file '${path}': ${what}`);
}

/**
 * Buffered little-endian reader over a file handle. `ensure(n)` makes sure n bytes are buffered at the cursor,
 * failing with a "truncated" error (saying what was being read) when the file ends first.
 */
class ChunkReader {
  private buf = Buffer.alloc(0);
  /** File offset of buf[0]. */
  private bufStart = 0;
  /** Cursor inside buf. */
  private pos = 0;
  private readonly utf8 = new TextDecoder('utf-8', { ignoreBOM: true });

  constructor(
    private readonly fh: FileHandle,
    readonly path: string,
    readonly fileSize: number,
  ) {}

  /** Absolute file offset of the cursor. */
  get offset(): number {
    return this.bufStart + this.pos;
  }

  get remaining(): number {
    return this.fileSize - this.offset;
  }

  private async ensure(n: number, what: string): Promise<void> {
    if (this.buf.length - this.pos >= n) return;
    if (n > this.remaining) {
      throw invalid(
        this.path,
        `truncated while reading ${what} at offset ${this.offset}: expected ${n} more bytes, the file has ${this.remaining}`,
      );
    }
    const keep = this.buf.length - this.pos;
    const size = Math.min(Math.max(n, CHUNK_SIZE), this.remaining);
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, this.pos);
    const want = size - keep;
    let got = 0;
    while (got < want) {
      const { bytesRead } = await this.fh.read(next, keep + got, want - got, this.bufStart + this.buf.length + got);
      if (bytesRead === 0) {
        throw invalid(this.path, `truncated while reading ${what}: the file ended early (changed while reading?)`);
      }
      got += bytesRead;
    }
    this.bufStart += this.pos;
    this.buf = next;
    this.pos = 0;
  }

  async u8(what: string): Promise<number> {
    await this.ensure(1, what);
    return this.buf[this.pos++]!;
  }

  async u32(what: string): Promise<number> {
    await this.ensure(4, what);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }

  async i64(what: string): Promise<bigint> {
    await this.ensure(8, what);
    const v = this.buf.readBigInt64LE(this.pos);
    this.pos += 8;
    return v;
  }

  async u64(what: string): Promise<bigint> {
    await this.ensure(8, what);
    const v = this.buf.readBigUInt64LE(this.pos);
    this.pos += 8;
    return v;
  }

  /** A u64 that must fit in [0, max]; `max` is usually derived from the remaining file size. */
  async count(what: string, max: number): Promise<number> {
    const v = await this.u64(what);
    if (v > BigInt(max)) {
      throw invalid(this.path, `${what} is ${v}, expected at most ${max} (bounded by the ${this.fileSize}-byte file size)`);
    }
    return Number(v);
  }

  async string(what: string): Promise<string> {
    const len = await this.count(`${what} length`, Math.max(0, this.remaining - 8));
    await this.ensure(len, what);
    const start = this.pos;
    this.pos += len;
    return decodeUtf8(this.buf, start, start + len, this.utf8);
  }

  /**
   * Synchronous fast path for `string()`: returns undefined (consuming nothing) when the string is not fully
   * buffered. Reading 150k vocabulary strings one `await` at a time would cost more than the parsing itself.
   */
  tryString(what: string): string | undefined {
    const avail = this.buf.length - this.pos;
    if (avail < 8) return undefined;
    const lo = this.buf.readUInt32LE(this.pos);
    const hi = this.buf.readUInt32LE(this.pos + 4);
    const max = this.remaining - 8;
    if (hi !== 0 || lo > max) {
      const len64 = (BigInt(hi) << 32n) | BigInt(lo);
      throw invalid(this.path, `${what} length is ${len64}, expected at most ${max} (bounded by the ${this.fileSize}-byte file size)`);
    }
    const len = lo;
    if (avail < 8 + len) return undefined;
    const start = this.pos + 8;
    this.pos = start + len;
    return decodeUtf8(this.buf, start, start + len, this.utf8);
  }

  /** Raw bytes of a fixed-size array, copied out so that typed arrays are aligned. */
  async bytes(n: number, what: string): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let done = 0;
    while (done < n) {
      const step = Math.min(n - done, CHUNK_SIZE);
      await this.ensure(step, what);
      out.set(this.buf.subarray(this.pos, this.pos + step), done);
      this.pos += step;
      done += step;
    }
    return out;
  }
}

const SHORT_STRING = 64;
const codeUnits: number[] = [];

/**
 * UTF-8 decode. Short strings (nearly every vocabulary entry) are decoded by hand, which avoids a Buffer view and
 * a TextDecoder call per string; anything malformed falls back to TextDecoder, which turns invalid bytes into U+FFFD.
 */
function decodeUtf8(buf: Buffer, start: number, end: number, dec: { decode(b: Uint8Array): string }): string {
  if (end - start > SHORT_STRING) return dec.decode(buf.subarray(start, end));
  codeUnits.length = 0;
  let i = start;
  while (i < end) {
    const b0 = buf[i]!;
    if (b0 < 0x80) {
      codeUnits.push(b0);
      i += 1;
      continue;
    }
    let cp = -1;
    if (b0 >= 0xc2 && b0 < 0xe0 && i + 1 < end) {
      const b1 = buf[i + 1]!;
      if ((b1 & 0xc0) === 0x80) {
        cp = ((b0 & 0x1f) << 6) | (b1 & 0x3f);
        i += 2;
      }
    } else if (b0 >= 0xe0 && b0 < 0xf0 && i + 2 < end) {
      const b1 = buf[i + 1]!;
      const b2 = buf[i + 2]!;
      const c = ((b0 & 0x0f) << 12) | ((b1 & 0x3f) << 6) | (b2 & 0x3f);
      if ((b1 & 0xc0) === 0x80 && (b2 & 0xc0) === 0x80 && c >= 0x800 && (c < 0xd800 || c > 0xdfff)) {
        cp = c;
        i += 3;
      }
    } else if (b0 >= 0xf0 && b0 < 0xf5 && i + 3 < end) {
      const b1 = buf[i + 1]!;
      const b2 = buf[i + 2]!;
      const b3 = buf[i + 3]!;
      const c = ((b0 & 0x07) << 18) | ((b1 & 0x3f) << 12) | ((b2 & 0x3f) << 6) | (b3 & 0x3f);
      if ((b1 & 0xc0) === 0x80 && (b2 & 0xc0) === 0x80 && (b3 & 0xc0) === 0x80 && c >= 0x10000 && c <= 0x10ffff) {
        cp = c;
        i += 4;
      }
    }
    if (cp < 0) return dec.decode(buf.subarray(start, end));
    if (cp >= 0x10000) {
      codeUnits.push(0xd800 + ((cp - 0x10000) >> 10), 0xdc00 + ((cp - 0x10000) & 0x3ff));
    } else {
      codeUnits.push(cp);
    }
  }
  return String.fromCharCode.apply(null, codeUnits);
}

/**
 * Typed-array view of little-endian data. Typed arrays use the host's byte order; every platform Node ships
 * prebuilt binaries for is little-endian, and big-endian GGUF files are rejected by the version check.
 */
function littleEndianArray(type: GgufType, bytes: Uint8Array, n: number): GgufArrayValue {
  const b = bytes.buffer;
  switch (type) {
    case GgufType.UINT8:
      return bytes;
    case GgufType.INT8:
      return new Int8Array(b, 0, n);
    case GgufType.UINT16:
      return new Uint16Array(b, 0, n);
    case GgufType.INT16:
      return new Int16Array(b, 0, n);
    case GgufType.UINT32:
      return new Uint32Array(b, 0, n);
    case GgufType.INT32:
      return new Int32Array(b, 0, n);
    case GgufType.FLOAT32:
      return new Float32Array(b, 0, n);
    case GgufType.FLOAT64:
      return new Float64Array(b, 0, n);
    case GgufType.UINT64:
      return new BigUint64Array(b, 0, n);
    case GgufType.INT64:
      return new BigInt64Array(b, 0, n);
    default:
      throw new Sqlr1Error('ERR_INTERNAL', `littleEndianArray: unexpected type ${type}`);
  }
}

async function readScalar(r: ChunkReader, type: GgufType, what: string): Promise<GgufScalar> {
  switch (type) {
    case GgufType.STRING:
      return r.string(what);
    case GgufType.BOOL: {
      const v = await r.u8(what);
      if (v > 1) throw invalid(r.path, `${what}: expected a bool (0 or 1), received ${v}`);
      return v === 1;
    }
    case GgufType.UINT64:
      return r.u64(what);
    case GgufType.INT64:
      return r.i64(what);
    default: {
      const bytes = await r.bytes(GGUF_TYPE_SIZE[type]!, what);
      const v = littleEndianArray(type, bytes, 1)[0];
      return v as number;
    }
  }
}

function checkType(r: ChunkReader, type: number, what: string, allowArray: boolean): GgufType {
  if (!Number.isInteger(type) || type < 0 || type > 12 || (!allowArray && type === GgufType.ARRAY)) {
    throw invalid(
      r.path,
      `${what} has GGUF type ${type}, expected one of 0..12${allowArray ? '' : ' other than 9 (nested arrays are not allowed)'}`,
    );
  }
  return type as GgufType;
}

async function readKv(r: ChunkReader, index: number, seen: Map<string, GgufKv>): Promise<GgufKv> {
  const key = await r.string(`key of key/value pair ${index}`);
  if (key.length === 0) throw invalid(r.path, `key of key/value pair ${index} is empty, expected a name`);
  if (seen.has(key)) throw invalid(r.path, `duplicate key '${key}' (pair ${index})`);
  const type = checkType(r, await r.u32(`type of '${key}'`), `key '${key}'`, true);
  if (type !== GgufType.ARRAY) {
    return { key, type, value: await readScalar(r, type, `value of '${key}'`) };
  }
  const arrayType = checkType(r, await r.u32(`element type of '${key}'`), `elements of array '${key}'`, false);
  const elemSize = GGUF_TYPE_SIZE[arrayType]!;
  const n = await r.count(`element count of array '${key}'`, Math.floor(Math.max(0, r.remaining - 8) / elemSize));
  let value: GgufArrayValue;
  if (arrayType === GgufType.STRING) {
    const out = new Array<string>(n);
    const what = `an element of '${key}'`;
    for (let i = 0; i < n; i++) out[i] = r.tryString(what) ?? (await r.string(`element ${i} of '${key}'`));
    value = out;
  } else if (arrayType === GgufType.BOOL) {
    const bytes = await r.bytes(n, `elements of '${key}'`);
    const out = new Array<boolean>(n);
    for (let i = 0; i < n; i++) {
      const v = bytes[i]!;
      if (v > 1) throw invalid(r.path, `element ${i} of '${key}': expected a bool (0 or 1), received ${v}`);
      out[i] = v === 1;
    }
    value = out;
  } else {
    value = littleEndianArray(arrayType, await r.bytes(n * elemSize, `elements of '${key}'`), n);
  }
  return { key, type, arrayType, value };
}

async function readTensorInfo(r: ChunkReader, index: number, names: Set<string>) {
  const name = await r.string(`name of tensor ${index}`);
  if (Buffer.byteLength(name) >= GGML_MAX_NAME) {
    throw invalid(r.path, `tensor ${index} name '${name.slice(0, 80)}' is ${Buffer.byteLength(name)} bytes, expected fewer than ${GGML_MAX_NAME}`);
  }
  if (names.has(name)) throw invalid(r.path, `duplicate tensor name '${name}' (tensor ${index})`);
  names.add(name);
  const nDims = await r.u32(`dimension count of tensor '${name}'`);
  if (nDims > GGML_MAX_DIMS) {
    throw invalid(r.path, `tensor '${name}' has ${nDims} dimensions, expected at most ${GGML_MAX_DIMS}`);
  }
  const dims: number[] = [];
  let nElements = 1n;
  for (let j = 0; j < nDims; j++) {
    const d = await r.i64(`dimension ${j} of tensor '${name}'`);
    if (d < 0n) throw invalid(r.path, `tensor '${name}' dimension ${j} is ${d}, expected >= 0`);
    nElements *= d;
    if (nElements > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw invalid(r.path, `tensor '${name}' has more than ${Number.MAX_SAFE_INTEGER} elements (dims so far ${[...dims, d].join('x')})`);
    }
    dims.push(Number(d));
  }
  const type = await r.u32(`ggml type of tensor '${name}'`);
  const traits = GGML_TYPES[type];
  if (!traits) throw invalid(r.path, `tensor '${name}' has ggml type ${type}, expected a known ggml type id`);
  const ne0 = dims.length > 0 ? dims[0]! : 1;
  if (ne0 % traits.blockSize !== 0) {
    throw invalid(r.path, `tensor '${name}' of type ${traits.name} has ${ne0} elements per row, expected a multiple of the block size ${traits.blockSize}`);
  }
  const offset = await r.u64(`data offset of tensor '${name}'`);
  const n = Number(nElements);
  const nBytes = (n / traits.blockSize) * traits.typeSize;
  return { name, dims, type, typeName: traits.name, offset, nElements: n, nBytes };
}

function padTo(x: number, alignment: number): number {
  return Math.ceil(x / alignment) * alignment;
}

/**
 * Reads the metadata of a GGUF file (header, key/value pairs, tensor infos) without reading tensor data.
 * Throws `Sqlr1Error` with `ERR_GGUF_NOT_FOUND` when the file does not exist and `ERR_GGUF_INVALID` for anything
 * malformed (wrong magic, unsupported version, truncation, counts or lengths larger than the file allows, bad
 * alignment, tensor offsets out of place or past the end of the file).
 */
export async function readGgufMetadata(path: string): Promise<GgufMetadata> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new Sqlr1Error('ERR_GGUF_NOT_FOUND', `GGUF file not found: '${path}'`, { cause: e });
    }
    throw new Sqlr1Error('ERR_GGUF_INVALID', `cannot open GGUF file '${path}': ${(e as Error).message}`, { cause: e });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw invalid(path, 'expected a regular file, received a directory or special file');
    return await readFromHandle(fh, path, st.size);
  } finally {
    await fh.close();
  }
}

async function readFromHandle(fh: FileHandle, path: string, fileSize: number): Promise<GgufMetadata> {
  const r = new ChunkReader(fh, path, fileSize);
  if (fileSize < 4) throw invalid(path, `truncated: expected the 4-byte magic 'GGUF', the file has ${fileSize} bytes`);
  const magic = await r.bytes(4, 'magic');
  if (Buffer.from(magic).toString('latin1') !== 'GGUF') {
    throw invalid(path, `expected magic 'GGUF' (47 47 55 46), received ${Buffer.from(magic).toString('hex').replace(/(..)(?!$)/g, '$1 ')}`);
  }
  const version = await r.u32('version');
  if (version !== 2 && version !== 3) {
    let hint = '';
    if (version === 1) hint = ' (GGUF v1 is no longer supported; re-convert the model)';
    else if ((version & 0xffff) === 0 && version !== 0) hint = ' (the file looks big-endian; only little-endian files are supported)';
    throw invalid(path, `expected GGUF version 2 or 3, received ${version}${hint}`);
  }
  // each key/value pair takes at least 8 (key length) + 1 (key) + 4 (type) + 1 (value) bytes;
  // each tensor info at least 8 + 1 + 4 + 4 + 8 bytes
  const nTensorsRaw = await r.i64('tensor count');
  const nKvRaw = await r.i64('key/value count');
  const maxTensors = Math.floor(r.remaining / 25);
  const maxKv = Math.floor(r.remaining / 14);
  if (nTensorsRaw < 0n || nTensorsRaw > BigInt(maxTensors)) {
    throw invalid(path, `tensor count is ${nTensorsRaw}, expected 0..${maxTensors} (bounded by the ${fileSize}-byte file size)`);
  }
  if (nKvRaw < 0n || nKvRaw > BigInt(maxKv)) {
    throw invalid(path, `key/value count is ${nKvRaw}, expected 0..${maxKv} (bounded by the ${fileSize}-byte file size)`);
  }
  const nTensors = Number(nTensorsRaw);
  const nKv = Number(nKvRaw);

  const kv = new Map<string, GgufKv>();
  for (let i = 0; i < nKv; i++) {
    const pair = await readKv(r, i, kv);
    kv.set(pair.key, pair);
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const al = kv.get('general.alignment');
  if (al) {
    if (al.type !== GgufType.UINT32) {
      throw invalid(path, `'general.alignment' must be of type uint32, received ${ggufTypeName(al.type)}`);
    }
    alignment = al.value as number;
    if (alignment === 0 || (alignment & (alignment - 1)) !== 0) {
      throw invalid(path, `'general.alignment' is ${alignment}, expected a power of 2`);
    }
  }

  const names = new Set<string>();
  const raw: Awaited<ReturnType<typeof readTensorInfo>>[] = [];
  for (let i = 0; i < nTensors; i++) raw.push(await readTensorInfo(r, i, names));

  const dataOffset = nTensors > 0 ? padTo(r.offset, alignment) : r.offset;
  if (nTensors > 0 && dataOffset > fileSize) {
    throw invalid(path, `truncated: the tensor data section starts at offset ${dataOffset}, the file has ${fileSize} bytes`);
  }
  // as in gguf.cpp: tensors are laid out in order, each padded to the alignment
  const tensors: GgufTensorInfo[] = [];
  let expected = 0;
  for (const t of raw) {
    if (t.offset !== BigInt(expected)) {
      throw invalid(path, `tensor '${t.name}' has data offset ${t.offset}, expected ${expected} (tensors must be contiguous and aligned to ${alignment})`);
    }
    const fileOffset = dataOffset + expected;
    if (fileOffset + t.nBytes > fileSize) {
      throw invalid(path, `truncated: tensor '${t.name}' needs bytes ${fileOffset}..${fileOffset + t.nBytes}, the file has ${fileSize} bytes`);
    }
    tensors.push({
      name: t.name,
      dims: t.dims,
      type: t.type,
      typeName: t.typeName,
      offset: expected,
      fileOffset,
      nElements: t.nElements,
      nBytes: t.nBytes,
    });
    expected += padTo(t.nBytes, alignment);
  }

  return { path, version, fileSize, kv, tensors, alignment, dataOffset, dataSize: expected };
}

// ---------------------------------------------------------------------------------------------------------------
// Typed accessors. Each returns undefined when the key is absent and throws ERR_GGUF_INVALID when it has the wrong
// type, naming the key, the expected type and the received one.

const INTEGER_TYPES = new Set<number>([
  GgufType.UINT8, GgufType.INT8, GgufType.UINT16, GgufType.INT16, GgufType.UINT32, GgufType.INT32, GgufType.UINT64,
  GgufType.INT64,
]);

function describe(kv: GgufKv): string {
  return kv.type === GgufType.ARRAY ? `array of ${ggufTypeName(kv.arrayType!)}` : ggufTypeName(kv.type);
}

function wrongType(md: GgufMetadata, kv: GgufKv, expected: string): Sqlr1Error {
  return invalid(md.path, `key '${kv.key}' must be ${expected}, received ${describe(kv)}`);
}

/** A string value. */
export function ggufString(md: GgufMetadata, key: string): string | undefined {
  const kv = md.kv.get(key);
  if (!kv) return undefined;
  if (kv.type !== GgufType.STRING) throw wrongType(md, kv, 'a string');
  return kv.value as string;
}

/** An integer value of any width, as a number (64-bit values must be safe integers). */
export function ggufInteger(md: GgufMetadata, key: string): number | undefined {
  const kv = md.kv.get(key);
  if (!kv) return undefined;
  if (!INTEGER_TYPES.has(kv.type)) throw wrongType(md, kv, 'an integer');
  const v = kv.value as number | bigint;
  if (typeof v === 'bigint') {
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw invalid(md.path, `key '${key}' is ${v}, expected a value within +-${Number.MAX_SAFE_INTEGER}`);
    }
    return Number(v);
  }
  return v;
}

/** A numeric value (integer or float). */
export function ggufNumber(md: GgufMetadata, key: string): number | undefined {
  const kv = md.kv.get(key);
  if (!kv) return undefined;
  if (kv.type === GgufType.FLOAT32 || kv.type === GgufType.FLOAT64) return kv.value as number;
  if (!INTEGER_TYPES.has(kv.type)) throw wrongType(md, kv, 'a number');
  return ggufInteger(md, key);
}

/** A bool value. */
export function ggufBool(md: GgufMetadata, key: string): boolean | undefined {
  const kv = md.kv.get(key);
  if (!kv) return undefined;
  if (kv.type !== GgufType.BOOL) throw wrongType(md, kv, 'a bool');
  return kv.value as boolean;
}

/** An array of strings. */
export function ggufStringArray(md: GgufMetadata, key: string): readonly string[] | undefined {
  const kv = md.kv.get(key);
  if (!kv) return undefined;
  if (kv.type !== GgufType.ARRAY || kv.arrayType !== GgufType.STRING) throw wrongType(md, kv, 'an array of strings');
  return kv.value as string[];
}

/** An array of integers of at most 32 bits, as an Int32Array view or copy (uint32 values above 2^31-1 are rejected). */
export function ggufInt32Array(md: GgufMetadata, key: string): Int32Array | undefined {
  const kv = md.kv.get(key);
  if (!kv) return undefined;
  const t = kv.arrayType;
  if (kv.type !== GgufType.ARRAY || t === undefined || !INTEGER_TYPES.has(t) || t === GgufType.UINT64 || t === GgufType.INT64) {
    throw wrongType(md, kv, 'an array of integers (at most 32 bits)');
  }
  if (t === GgufType.INT32) return kv.value as Int32Array;
  const src = kv.value as Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array;
  const out = new Int32Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const v = src[i]!;
    if (v > 0x7fffffff) throw invalid(md.path, `element ${i} of '${key}' is ${v}, expected at most ${0x7fffffff}`);
    out[i] = v;
  }
  return out;
}
