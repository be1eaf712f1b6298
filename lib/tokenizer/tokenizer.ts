/**
 * Byte-level BPE tokenizer built from GGUF metadata (`tokenizer.ggml.*`), matching llama.cpp's llama-vocab.cpp:
 * special-token partitioning (`tokenizer_st_partition`), the pre-tokenizer regex of `tokenizer.ggml.pre`, BPE by
 * merge rank, byte fallback, BOS/EOS insertion, token attributes from `tokenizer.ggml.token_type`, and the
 * end-of-generation set. Decoding concatenates raw token bytes; `StreamDecoder` turns a token stream into text
 * without ever splitting a UTF-8 sequence.
 */
import { Sqlr1Error } from '../errors.js';
import {
  type GgufMetadata,
  ggufBool,
  ggufInt32Array,
  ggufInteger,
  ggufString,
  ggufStringArray,
  readGgufMetadata,
} from '../gguf/reader.js';
import { BpeMerges } from './bpe.js';
import { checkTokenId } from './token-range.js';
import { BYTE_TO_CHAR, CHAR_TO_BYTE, utf8Bytes } from './bytes.js';
import { type PreTokenizer, SUPPORTED_PRE_TOKENIZERS, findPreTokenizer, preTokenize } from './pretokenize.js';

/** Token attributes (llama.h `llama_token_attr`), a bit set. */
export const TokenAttr = {
  UNDEFINED: 0,
  UNKNOWN: 1 << 0,
  UNUSED: 1 << 1,
  NORMAL: 1 << 2,
  CONTROL: 1 << 3,
  USER_DEFINED: 1 << 4,
  BYTE: 1 << 5,
} as const;

/** `tokenizer.ggml.token_type` values (llama.h `llama_token_type`). */
const TOKEN_TYPE_TO_ATTR: Readonly<Record<number, number>> = {
  0: TokenAttr.UNDEFINED,
  1: TokenAttr.NORMAL,
  2: TokenAttr.UNKNOWN,
  3: TokenAttr.CONTROL,
  4: TokenAttr.USER_DEFINED,
  5: TokenAttr.UNUSED,
  6: TokenAttr.BYTE,
};

/** Token texts that end generation (llama.cpp's list, the ones relevant to byte-level BPE vocabularies). */
const EOG_TEXTS: ReadonlySet<string> = new Set([
  '<|eot_id|>', '<|im_end|>', '<|end|>', '<|return|>', '<|call|>', '<end_of_turn>', '<|endoftext|>', '<|eom_id|>',
  '<EOT>', '_<EOT>', '<|end_of_text|>', '<end_of_utterance>', '<｜end▁of▁sentence｜>',
]);
/** EOT candidates in priority order, used when `tokenizer.ggml.eot_token_id` is absent. */
const EOT_TEXTS: readonly string[] = [
  '<|eot_id|>', '<|im_end|>', '<|end|>', '<end_of_turn>', '<|endoftext|>', '<|end_of_text|>', '<EOT>', '_<EOT>',
  '<｜end▁of▁sentence｜>', '<end_of_utterance>',
];
/** Fill-in-the-middle tokens that llama.cpp treats as end of generation. */
const FIM_EOG: readonly { key: string; texts: readonly string[] }[] = [
  { key: 'tokenizer.ggml.fim_pad_token_id', texts: ['<|fim_pad|>', '<fim-pad>', '<fim_pad>', '<PAD>'] },
  { key: 'tokenizer.ggml.fim_rep_token_id', texts: ['<|fim_repo|>', '<|repo_name|>', '<fim-repo>', '<REPO>', '<reponame>'] },
  { key: 'tokenizer.ggml.fim_sep_token_id', texts: ['<|file_sep|>'] },
];

export interface EncodeOptions {
  /** Add BOS/EOS when the vocabulary asks for them (`tokenizer.ggml.add_bos_token`/`add_eos_token`). Default true. */
  addSpecial?: boolean;
  /**
   * Recognise control tokens written in the text (e.g. `<|im_start|>`) as single ids. Default false: they are
   * tokenized as plain text. User-defined tokens are always recognised, as in llama.cpp and HF tokenizers.
   */
  parseSpecial?: boolean;
}

export interface DecodeOptions {
  /** Drop control and unknown tokens (BOS, EOS, `<|im_end|>`, ...) from the output. Default false. */
  skipSpecial?: boolean;
}

/** Everything the tokenizer needs, as read from `tokenizer.ggml.*` keys. */
export interface TokenizerVocab {
  model: string;
  pre: string;
  tokens: readonly string[];
  merges: readonly string[];
  tokenTypes?: ArrayLike<number>;
  bosId?: number | null;
  eosId?: number | null;
  eotId?: number | null;
  eomId?: number | null;
  padId?: number | null;
  unkId?: number | null;
  addBos?: boolean;
  addEos?: boolean;
  chatTemplate?: string | null;
  /** Explicit FIM ids by GGUF key (e.g. 'tokenizer.ggml.fim_pad_token_id'). */
  fimIds?: Readonly<Record<string, number>>;
}

/** Words cached (their ids), and the longest word cached: pre-tokenized words repeat a lot in SQL prompts. */
const MAX_WORD_CACHE = 1 << 17;
const MAX_CACHED_WORD = 256;

function tokErr(message: string): Sqlr1Error {
  return new Sqlr1Error('ERR_TOKENIZER', message);
}

/** Reads the tokenizer keys of a GGUF file's metadata into a `TokenizerVocab`. */
export function vocabFromMetadata(md: GgufMetadata): TokenizerVocab {
  const model = ggufString(md, 'tokenizer.ggml.model');
  if (model === undefined) throw tokErr(`'${md.path}' has no 'tokenizer.ggml.model': expected a vocabulary`);
  const tokens = ggufStringArray(md, 'tokenizer.ggml.tokens');
  if (!tokens) throw tokErr(`'${md.path}' has no 'tokenizer.ggml.tokens'`);
  const merges = ggufStringArray(md, 'tokenizer.ggml.merges');
  if (!merges) throw tokErr(`'${md.path}' has no 'tokenizer.ggml.merges': expected BPE merges for model '${model}'`);
  const id = (key: string): number | null => ggufInteger(md, key) ?? null;
  const fimIds: Record<string, number> = {};
  for (const { key } of FIM_EOG) {
    const v = ggufInteger(md, key);
    if (v !== undefined) fimIds[key] = v;
  }
  const vocab: TokenizerVocab = {
    model,
    pre: ggufString(md, 'tokenizer.ggml.pre') ?? '',
    tokens,
    merges,
    bosId: id('tokenizer.ggml.bos_token_id'),
    eosId: id('tokenizer.ggml.eos_token_id'),
    eotId: id('tokenizer.ggml.eot_token_id'),
    eomId: id('tokenizer.ggml.eom_token_id'),
    padId: id('tokenizer.ggml.padding_token_id'),
    unkId: id('tokenizer.ggml.unknown_token_id'),
    chatTemplate: ggufString(md, 'tokenizer.chat_template') ?? null,
    fimIds,
  };
  const types = ggufInt32Array(md, 'tokenizer.ggml.token_type');
  if (types) vocab.tokenTypes = types;
  const addBos = ggufBool(md, 'tokenizer.ggml.add_bos_token');
  if (addBos !== undefined) vocab.addBos = addBos;
  const addEos = ggufBool(md, 'tokenizer.ggml.add_eos_token');
  if (addEos !== undefined) vocab.addEos = addEos;
  return vocab;
}

type Fragment = string | number;

export class Tokenizer {
  /** Number of tokens in the vocabulary. */
  readonly vocabSize: number;
  /** `tokenizer.ggml.model` ('gpt2'). */
  readonly model: string;
  /** `tokenizer.ggml.pre` as given in the file (e.g. 'qwen2'). */
  readonly pre: string;
  readonly bosId: number | null;
  readonly eosId: number | null;
  /** End-of-turn token: `tokenizer.ggml.eot_token_id`, else found by text (`<|im_end|>`, `<|eot_id|>`, ...). */
  readonly eotId: number | null;
  readonly eomId: number | null;
  readonly padId: number | null;
  readonly unkId: number | null;
  /** Whether `encode(..., { addSpecial: true })` prepends BOS / appends EOS. */
  readonly addBos: boolean;
  readonly addEos: boolean;
  /** `tokenizer.chat_template`, or null when the file has none. */
  readonly chatTemplate: string | null;
  /** All end-of-generation ids (EOS, EOT, EOM, `<|endoftext|>`, FIM pad/repo/sep, ...). */
  readonly eogIds: ReadonlySet<number>;

  private readonly tokens: readonly string[];
  private readonly attrs: Uint16Array;
  private readonly textToId = new Map<string, number>();
  private readonly preTokenizer: PreTokenizer;
  private readonly merges: BpeMerges;
  /** Control/user-defined/unknown token ids, longest text first (llama.cpp `cache_special_tokens`). */
  private readonly specialIds: readonly number[];
  private readonly pieces: (Uint8Array | undefined)[];
  private readonly wordCache = new Map<string, readonly number[]>();
  private wordBytes = new Uint8Array(256);

  private constructor(v: TokenizerVocab) {
    if (v.model !== 'gpt2') {
      throw tokErr(`unsupported tokenizer model: expected 'gpt2' (byte-level BPE), received '${v.model}'`);
    }
    const pre = findPreTokenizer(v.pre);
    if (!pre) {
      throw tokErr(
        `unsupported pre-tokenizer 'tokenizer.ggml.pre' = '${v.pre}': expected one of ${SUPPORTED_PRE_TOKENIZERS.join(', ')}`,
      );
    }
    const n = v.tokens.length;
    if (n === 0) throw tokErr('the vocabulary is empty: expected at least one token');
    if (v.tokenTypes && v.tokenTypes.length < n) {
      throw tokErr(`'tokenizer.ggml.token_type' has ${v.tokenTypes.length} entries, expected ${n} (one per token)`);
    }
    this.model = v.model;
    this.pre = v.pre;
    this.preTokenizer = pre;
    this.vocabSize = n;
    this.chatTemplate = v.chatTemplate ?? null;

    const tokens = new Array<string>(n);
    this.attrs = new Uint16Array(n);
    for (let i = 0; i < n; i++) {
      // as llama.cpp: empty tokens get a placeholder text, duplicate texts map to the last id
      const t = v.tokens[i]!.length === 0 ? `[EMPTY_${i}]` : v.tokens[i]!;
      tokens[i] = t;
      this.textToId.set(t, i);
      const type = v.tokenTypes ? v.tokenTypes[i]! : 1;
      this.attrs[i] = TOKEN_TYPE_TO_ATTR[type] ?? TokenAttr.UNDEFINED;
    }
    this.tokens = tokens;
    this.pieces = new Array<Uint8Array | undefined>(n);

    const checkId = (name: string, id: number | null | undefined): number | null => {
      if (id === null || id === undefined) return null;
      if (!Number.isInteger(id) || id < 0 || id >= n) {
        throw tokErr(`${name} is ${id}, expected a token id in [0, ${n})`);
      }
      return id;
    };
    this.bosId = checkId('tokenizer.ggml.bos_token_id', v.bosId);
    this.eosId = checkId('tokenizer.ggml.eos_token_id', v.eosId);
    this.padId = checkId('tokenizer.ggml.padding_token_id', v.padId);
    this.unkId = checkId('tokenizer.ggml.unknown_token_id', v.unkId);
    this.eomId = checkId('tokenizer.ggml.eom_token_id', v.eomId) ?? this.textToId.get('<|eom_id|>') ?? null;
    let eot = checkId('tokenizer.ggml.eot_token_id', v.eotId);
    if (eot === null) {
      for (const t of EOT_TEXTS) {
        const id = this.textToId.get(t);
        if (id !== undefined) {
          eot = id;
          break;
        }
      }
    }
    this.eotId = eot;

    // end-of-generation set; every member is (made) a control token, as llama.cpp does
    const eog = new Set<number>();
    for (const { key, texts } of FIM_EOG) {
      let id = checkId(key, v.fimIds?.[key]);
      for (let k = 0; id === null && k < texts.length; k++) id = this.textToId.get(texts[k]!) ?? null;
      if (id !== null) eog.add(id);
    }
    for (const t of EOG_TEXTS) {
      const id = this.textToId.get(t);
      if (id !== undefined) eog.add(id);
    }
    for (const id of [this.eosId, this.eotId, this.eomId]) if (id !== null) eog.add(id);
    for (const id of eog) this.attrs[id]! |= TokenAttr.CONTROL;
    this.eogIds = eog;
    for (let i = 0; i < n; i++) {
      if (this.attrs[i]! & TokenAttr.CONTROL && tokens[i]!.includes('unused')) this.attrs[i]! |= TokenAttr.UNUSED;
    }

    this.addBos = v.addBos ?? pre.addBosDefault;
    this.addEos = v.addEos ?? false;
    if (this.addBos && this.bosId === null) throw tokErr('the vocabulary asks for a BOS token but has no bos_token_id');
    if (this.addEos && this.eosId === null) throw tokErr('the vocabulary asks for an EOS token but has no eos_token_id');

    const special: number[] = [];
    const mask = TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN;
    for (let i = 0; i < n; i++) if (this.attrs[i]! & mask) special.push(i);
    const byteLen = (id: number): number => Buffer.byteLength(tokens[id]!);
    special.sort((a, b) => byteLen(b) - byteLen(a) || a - b);
    this.specialIds = special;

    this.merges = new BpeMerges(v.merges, tokens, (s) => this.textToId.get(s));
  }

  /** Reads a GGUF file's metadata (not its tensors) and builds its tokenizer. */
  static async fromGguf(path: string): Promise<Tokenizer> {
    return Tokenizer.fromMetadata(await readGgufMetadata(path));
  }

  /** Builds the tokenizer from already-read GGUF metadata. */
  static fromMetadata(md: GgufMetadata): Tokenizer {
    return new Tokenizer(vocabFromMetadata(md));
  }

  /** Builds the tokenizer from explicit vocabulary data (tests, synthesized vocabularies). */
  static fromVocab(vocab: TokenizerVocab): Tokenizer {
    return new Tokenizer(vocab);
  }

  // -------------------------------------------------------------------------------------------------------------
  // encoding

  /** Token ids of `text`. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') {
      throw new Sqlr1Error('ERR_INVALID_ARG', `encode: expected text to be a string, received ${typeof text}`);
    }
    const addSpecial = options.addSpecial ?? true;
    const parseSpecial = options.parseSpecial ?? false;
    const out: number[] = [];
    if (addSpecial && this.addBos) out.push(this.bosId!);
    for (const frag of this.partition(text, parseSpecial)) {
      if (typeof frag === 'number') out.push(frag);
      else this.encodeText(frag, out);
    }
    if (addSpecial && this.addEos) out.push(this.eosId!);
    return out;
  }

  /**
   * Splits text on special tokens, longest token text first, each token over all remaining text fragments
   * (llama.cpp `tokenizer_st_partition`). Without `parseSpecial` only user-defined tokens are split out.
   */
  private partition(text: string, parseSpecial: boolean): Fragment[] {
    let frags: Fragment[] = text.length > 0 ? [text] : [];
    if (text.length === 0) return frags;
    for (const id of this.specialIds) {
      if (!parseSpecial && this.attrs[id]! & (TokenAttr.CONTROL | TokenAttr.UNKNOWN)) continue;
      const tok = this.tokens[id]!;
      if (!text.includes(tok)) continue;
      const next: Fragment[] = [];
      for (const f of frags) {
        if (typeof f === 'number') {
          next.push(f);
          continue;
        }
        let from = 0;
        for (;;) {
          const at = f.indexOf(tok, from);
          if (at < 0) break;
          if (at > from) next.push(f.slice(from, at));
          next.push(id);
          from = at + tok.length;
        }
        if (from < f.length) next.push(from === 0 ? f : f.slice(from));
      }
      frags = next;
    }
    return frags;
  }

  private encodeText(text: string, out: number[]): void {
    for (const word of preTokenize(this.preTokenizer, text)) {
      let ids = this.wordCache.get(word);
      if (ids === undefined) {
        ids = this.encodeWord(word);
        if (word.length <= MAX_CACHED_WORD) {
          if (this.wordCache.size >= MAX_WORD_CACHE) this.wordCache.clear();
          this.wordCache.set(word, ids);
        }
      }
      for (let i = 0; i < ids.length; i++) out.push(ids[i]!);
    }
  }

  private encodeWord(word: string): number[] {
    const bytes = this.utf8(word);
    const n = bytes.length;
    const ids: number[] = [];
    if (this.preTokenizer.ignoreMerges) {
      let mapped = '';
      for (let i = 0; i < n; i++) mapped += BYTE_TO_CHAR[bytes[i]!];
      const whole = this.textToId.get(mapped);
      if (whole !== undefined) return [whole];
    }
    this.merges.merge(bytes, 0, n, (sym) => {
      const id = this.merges.symbolTokenId(sym);
      if (id >= 0) {
        ids.push(id);
        return;
      }
      // byte fallback as llama.cpp: each byte of the symbol's UTF-8 text looked up as a one-byte token
      const s = utf8Bytes(this.merges.symbolText(sym));
      for (const b of s) {
        const t = b < 0x80 ? this.textToId.get(String.fromCharCode(b)) : undefined;
        if (t !== undefined) ids.push(t);
      }
    });
    return ids;
  }

  /** UTF-8 bytes of a word into a reused buffer (a view of it is returned). */
  private utf8(s: string): Uint8Array {
    if (this.wordBytes.length < s.length * 3) this.wordBytes = new Uint8Array(Math.max(256, s.length * 3));
    const buf = this.wordBytes;
    let j = 0;
    let ascii = true;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) {
        ascii = false;
        break;
      }
      buf[j++] = c;
    }
    if (ascii) return buf.subarray(0, j);
    const r = UTF8.encodeInto(s, buf);
    return buf.subarray(0, r.written);
  }

  // -------------------------------------------------------------------------------------------------------------
  // decoding

  private checkId(id: number): void {
    checkTokenId(id, this.vocabSize, 'decode');
  }

  /** Raw bytes of one token (llama.cpp token_to_piece with special = true). */
  private piece(id: number): Uint8Array {
    let p = this.pieces[id];
    if (p !== undefined) return p;
    const text = this.tokens[id]!;
    const attr = this.attrs[id]!;
    if (attr & (TokenAttr.CONTROL | TokenAttr.UNKNOWN | TokenAttr.USER_DEFINED)) {
      p = utf8Bytes(text);
    } else if (attr & TokenAttr.NORMAL) {
      p = decodeByteText(text);
    } else if (attr & TokenAttr.BYTE) {
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(text);
      p = m ? Uint8Array.of(parseInt(m[1]!, 16)) : EMPTY;
    } else {
      p = EMPTY; // unused / undefined tokens render as nothing
    }
    this.pieces[id] = p;
    return p;
  }

  private isSkippedSpecial(id: number): boolean {
    return (this.attrs[id]! & (TokenAttr.CONTROL | TokenAttr.UNKNOWN)) !== 0;
  }

  /** Concatenated raw bytes of the tokens (control tokens included, as their text). */
  decodeBytes(ids: ArrayLike<number>, options: DecodeOptions = {}): Uint8Array {
    const skip = options.skipSpecial ?? false;
    const parts: Uint8Array[] = [];
    let total = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      this.checkId(id);
      if (skip && this.isSkippedSpecial(id)) continue;
      const p = this.piece(id);
      parts.push(p);
      total += p.length;
    }
    const out = new Uint8Array(total);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }

  /** Text of the tokens; invalid UTF-8 (e.g. a multi-byte character cut at the end) becomes U+FFFD. */
  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    return LOSSY.decode(this.decodeBytes(ids, options));
  }

  /** One token's raw bytes decoded lossily (a partial UTF-8 sequence becomes U+FFFD). */
  tokenToPiece(id: number): string {
    this.checkId(id);
    return LOSSY.decode(this.piece(id));
  }

  /** One token's raw bytes. */
  tokenBytes(id: number): Uint8Array {
    this.checkId(id);
    return this.piece(id).slice();
  }

  /** A decoder that turns tokens into text one at a time, emitting only complete UTF-8 sequences. */
  streamDecoder(options: DecodeOptions = {}): StreamDecoder {
    return new StreamDecoder(this, options);
  }

  // -------------------------------------------------------------------------------------------------------------
  // vocabulary queries

  /** The vocabulary text of a token (GPT-2 byte alphabet for normal tokens, e.g. 'Ġthe'). */
  tokenText(id: number): string {
    this.checkId(id);
    return this.tokens[id]!;
  }

  /** The id whose vocabulary text is exactly `text`, or undefined. */
  tokenId(text: string): number | undefined {
    return this.textToId.get(text);
  }

  /** Attribute bits of a token (see `TokenAttr`). */
  tokenAttr(id: number): number {
    this.checkId(id);
    return this.attrs[id]!;
  }

  /** True for control, unknown and user-defined tokens. */
  isSpecial(id: number): boolean {
    return (this.tokenAttr(id) & (TokenAttr.CONTROL | TokenAttr.UNKNOWN | TokenAttr.USER_DEFINED)) !== 0;
  }

  isControl(id: number): boolean {
    return (this.tokenAttr(id) & TokenAttr.CONTROL) !== 0;
  }

  /** True when sampling this token ends generation. */
  isEog(id: number): boolean {
    return this.eogIds.has(id);
  }

  /** Number of distinct BPE merges. */
  get mergeCount(): number {
    return this.merges.size;
  }
}

/** Streaming decoder: `push` returns the text completed by each token; `flush` returns what is left. */
export class StreamDecoder {
  private dec = new TextDecoder('utf-8', { ignoreBOM: true });
  private readonly skipSpecial: boolean;

  constructor(
    private readonly tokenizer: Tokenizer,
    options: DecodeOptions = {},
  ) {
    this.skipSpecial = options.skipSpecial ?? false;
  }

  /** Adds tokens; returns the newly completed text (possibly ''). Bytes of an unfinished character are held back. */
  push(ids: number | ArrayLike<number>): string {
    const arr = typeof ids === 'number' ? [ids] : ids;
    const bytes = this.tokenizer.decodeBytes(arr, { skipSpecial: this.skipSpecial });
    return this.dec.decode(bytes, { stream: true });
  }

  /** Ends the stream: returns held-back bytes (an unfinished character becomes U+FFFD) and resets. */
  flush(): string {
    return this.dec.decode();
  }

  /** Drops held-back bytes. */
  reset(): void {
    this.dec = new TextDecoder('utf-8', { ignoreBOM: true });
  }
}

const EMPTY = new Uint8Array(0);
const LOSSY = new TextDecoder('utf-8', { ignoreBOM: true });
const UTF8 = new TextEncoder();

/**
 * Bytes of a normal token: each code point of its text maps back through the GPT-2 byte alphabet. A code point
 * outside it yields "[UNK_BYTE_0x<utf8 hex><text>]", llama.cpp's marker.
 */
function decodeByteText(text: string): Uint8Array {
  const out: number[] = [];
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    const b = cp < CHAR_TO_BYTE.length ? CHAR_TO_BYTE[cp]! : -1;
    if (b >= 0) {
      out.push(b);
    } else {
      const hex = Array.from(utf8Bytes(ch), (x) => x.toString(16).padStart(2, '0')).join('');
      for (const x of utf8Bytes(`[UNK_BYTE_0x${hex}${text}]`)) out.push(x);
    }
  }
  return Uint8Array.from(out);
}
