/**
 * A minimal GGUF writer for tests: builds well-formed and deliberately broken files (wrong magic, bad
 * shapes, unsupported types, truncation) without going through ggml.
 */
export type KvValue =
  | { type: 'u32'; value: number }
  | { type: 'f32'; value: number }
  | { type: 'str'; value: string }
  | { type: 'arr_str'; value: string[] }
  | { type: 'arr_i32'; value: number[] };

export interface TensorSpec {
  name: string;
  ne: number[];
  /** ggml type id (0 = f32, 1 = f16, 6 = q5_0, ...). */
  type: number;
  /** Raw bytes of the data (its length is trusted, so a test can lie about it). */
  data: Uint8Array;
}

const TYPE_IDS = { u32: 4, f32: 6, str: 8, arr: 9, i32: 5 } as const;

export function writeGguf(kv: Record<string, KvValue>, tensors: TensorSpec[], options: { magic?: string; version?: number } = {}): Buffer {
  const parts: Buffer[] = [];
  const u32 = (v: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(v >>> 0); return b; };
  const u64 = (v: number | bigint) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; };
  const str = (s: string) => { const b = Buffer.from(s, 'utf8'); return Buffer.concat([u64(b.length), b]); };
  parts.push(Buffer.from(options.magic ?? 'GGUF', 'latin1'), u32(options.version ?? 3), u64(tensors.length), u64(Object.keys(kv).length));
  for (const [key, v] of Object.entries(kv)) {
    parts.push(str(key));
    switch (v.type) {
      case 'u32': parts.push(u32(TYPE_IDS.u32), u32(v.value)); break;
      case 'f32': { const b = Buffer.alloc(4); b.writeFloatLE(v.value); parts.push(u32(TYPE_IDS.f32), b); break; }
      case 'str': parts.push(u32(TYPE_IDS.str), str(v.value)); break;
      case 'arr_str': parts.push(u32(TYPE_IDS.arr), u32(TYPE_IDS.str), u64(v.value.length), ...v.value.map(str)); break;
      case 'arr_i32': parts.push(u32(TYPE_IDS.arr), u32(TYPE_IDS.i32), u64(v.value.length), ...v.value.map((x) => { const b = Buffer.alloc(4); b.writeInt32LE(x); return b; })); break;
    }
  }
  let offset = 0;
  const align = (n: number) => Math.ceil(n / 32) * 32;
  for (const t of tensors) {
    parts.push(str(t.name), u32(t.ne.length), ...t.ne.map((d) => u64(d)), u32(t.type), u64(offset));
    offset = align(offset + t.data.length);
  }
  let head = Buffer.concat(parts);
  head = Buffer.concat([head, Buffer.alloc(align(head.length) - head.length)]);
  const data: Buffer[] = [];
  for (const t of tensors) {
    data.push(Buffer.from(t.data), Buffer.alloc(align(t.data.length) - t.data.length));
  }
  return Buffer.concat([head, ...data]);
}

/** Hyperparameters and tensors of a minimal valid qwen2 model (f32), for tests to break one piece at a time. */
export function minimalQwen2(opts: { arch?: string; vocab?: number; embd?: number; wtype?: number; wbytes?: (n: number) => number } = {}): {
  kv: Record<string, KvValue>; tensors: TensorSpec[];
} {
  const arch = opts.arch ?? 'qwen2';
  const V = opts.vocab ?? 8, E = opts.embd ?? 32, H = 2, F = 64;
  const tokens = Array.from({ length: V }, (_, i) => (i < 4 ? ['a', 'b', 'c', 'd'][i]! : `t${i}`));
  const kv: Record<string, KvValue> = {
    'general.architecture': { type: 'str', value: arch },
    [`${arch}.context_length`]: { type: 'u32', value: 128 },
    [`${arch}.embedding_length`]: { type: 'u32', value: E },
    [`${arch}.block_count`]: { type: 'u32', value: 1 },
    [`${arch}.feed_forward_length`]: { type: 'u32', value: F },
    [`${arch}.attention.head_count`]: { type: 'u32', value: H },
    [`${arch}.attention.head_count_kv`]: { type: 'u32', value: H },
    'tokenizer.ggml.model': { type: 'str', value: 'gpt2' },
    'tokenizer.ggml.pre': { type: 'str', value: 'qwen2' },
    'tokenizer.ggml.tokens': { type: 'arr_str', value: tokens },
    'tokenizer.ggml.token_type': { type: 'arr_i32', value: tokens.map(() => 1) },
    'tokenizer.ggml.merges': { type: 'arr_str', value: [] },
  };
  const wt = opts.wtype ?? 0;
  const wb = opts.wbytes ?? ((n: number) => n * 4);
  const f32 = (name: string, ne: number[]) => ({ name, ne, type: 0, data: new Uint8Array(ne.reduce((a, b) => a * b, 1) * 4) });
  const w = (name: string, ne: number[]) => ({ name, ne, type: wt, data: new Uint8Array(wb(ne.reduce((a, b) => a * b, 1))) });
  const tensors: TensorSpec[] = [
    w('token_embd.weight', [E, V]), f32('output_norm.weight', [E]),
    f32('blk.0.attn_norm.weight', [E]), w('blk.0.attn_q.weight', [E, E]), w('blk.0.attn_k.weight', [E, E]),
    w('blk.0.attn_v.weight', [E, E]), w('blk.0.attn_output.weight', [E, E]), f32('blk.0.ffn_norm.weight', [E]),
    w('blk.0.ffn_gate.weight', [E, F]), w('blk.0.ffn_up.weight', [E, F]), w('blk.0.ffn_down.weight', [F, E]),
  ];
  return { kv, tensors };
}
