/**
 * Pre-tokenizer regexes: text is split into words before BPE, exactly as llama.cpp's llama-vocab.cpp does for
 * each `tokenizer.ggml.pre` value. The originals (from the models' tokenizer.json) are
 *
 *   llama-bpe: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *   qwen2:     (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *
 * Two adaptations, both as llama.cpp makes them:
 * - JavaScript has no inline case-insensitive group, so (?i:'s|...) is expanded to '[sS]|'[tT]|'[rR][eE]|...
 *   (llama.cpp uses this same expansion).
 * - `\s` is llama.cpp's whitespace set (unicode-data.cpp `unicode_set_whitespace`: \t \n \v \f \r, space, U+0085,
 *   U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000), not JavaScript's, which lacks U+0085
 *   and adds U+FEFF. `\S` is its complement.
 * `\p{L}` / `\p{N}` come from the JavaScript engine's Unicode tables; llama.cpp's tables are generated from a
 * Unicode release too, so code points assigned in a newer release than either side knows may classify differently.
 */

const WS = '\\t\\n\\v\\f\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000';
const CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";

function build(numbers: string): RegExp {
  return new RegExp(
    [
      CONTRACTIONS,
      '[^\\r\\n\\p{L}\\p{N}]?\\p{L}+',
      numbers,
      ` ?[^${WS}\\p{L}\\p{N}]+[\\r\\n]*`,
      `[${WS}]*[\\r\\n]+`,
      `[${WS}]+(?![^${WS}])`,
      `[${WS}]+`,
    ].join('|'),
    'gu',
  );
}

/** A pre-tokenizer family and its llama.cpp behaviour flags. */
export interface PreTokenizer {
  /** Family name ('qwen2' or 'llama-bpe'). */
  readonly name: string;
  readonly regex: RegExp;
  /** When a whole pre-tokenized word is a vocabulary token, use it without merging (llama.cpp `ignore_merges`). */
  readonly ignoreMerges: boolean;
  /** Default for `tokenizer.ggml.add_bos_token` when the GGUF does not say. */
  readonly addBosDefault: boolean;
}

const QWEN2: PreTokenizer = { name: 'qwen2', regex: build('\\p{N}'), ignoreMerges: false, addBosDefault: false };
const LLAMA3: PreTokenizer = { name: 'llama-bpe', regex: build('\\p{N}{1,3}'), ignoreMerges: true, addBosDefault: true };

/** `tokenizer.ggml.pre` values mapped to the family llama.cpp uses for them. */
const PRE_TOKENIZERS: Readonly<Record<string, PreTokenizer>> = {
  qwen2: QWEN2,
  'deepseek-r1-qwen': QWEN2,
  megrez: QWEN2,
  'llama-bpe': LLAMA3,
  llama3: LLAMA3,
  'llama-v3': LLAMA3,
};

/** Supported `tokenizer.ggml.pre` values. */
export const SUPPORTED_PRE_TOKENIZERS: readonly string[] = Object.keys(PRE_TOKENIZERS);

export function findPreTokenizer(pre: string): PreTokenizer | undefined {
  return Object.hasOwn(PRE_TOKENIZERS, pre) ? PRE_TOKENIZERS[pre] : undefined;
}

/** Splits text into pre-tokenizer words; the words concatenate back to the text. */
export function preTokenize(pre: PreTokenizer, text: string): string[] {
  if (text.length === 0) return [];
  // every code point is matched by one of the alternatives, so the matches tile the text
  return text.match(pre.regex) ?? [];
}
