import t from 'tap';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tokenizer, TokenAttr, type TokenizerVocab } from '../../lib/tokenizer/index.js';
import { BYTE_TO_CHAR } from '../../lib/tokenizer/bytes.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const modelsDir = join(repoRoot, 'native/.deps/llama.cpp/models');

const loaded = new Map<string, Promise<Tokenizer>>();
async function load(t: { fail(msg: string): void }, name: string): Promise<Tokenizer | undefined> {
  const p = join(modelsDir, `ggml-vocab-${name}.gguf`);
  if (!existsSync(p)) {
    t.fail(`llama.cpp vocab bundle not found at ${p}: run \`node scripts/fetch-ggml.mjs\``);
    return undefined;
  }
  if (!loaded.has(p)) loaded.set(p, Tokenizer.fromGguf(p));
  return loaded.get(p)!;
}

t.test('control tokens: one id with parseSpecial, plain text without', async (t) => {
  const tok = await load(t, 'qwen2');
  if (!tok) return;
  const imStart = tok.tokenId('<|im_start|>')!;
  const imEnd = tok.tokenId('<|im_end|>')!;
  t.ok(imStart !== undefined && imEnd !== undefined);
  t.ok(tok.isControl(imStart) && tok.isSpecial(imStart));
  const text = '<|im_start|>user\nWhich tables?<|im_end|>\n';

  const parsed = tok.encode(text, { parseSpecial: true });
  t.equal(parsed[0], imStart, 'starts with <|im_start|>');
  t.equal(parsed.filter((x) => x === imEnd).length, 1, 'one <|im_end|>');
  t.same(parsed.slice(1, parsed.indexOf(imEnd)), tok.encode('user\nWhich tables?'), 'text between is BPE');
  t.equal(tok.decode(parsed), text, 'decode renders control tokens as their text');
  t.equal(tok.decode(parsed, { skipSpecial: true }), 'user\nWhich tables?\n', 'skipSpecial drops them');

  const plain = tok.encode(text);
  t.notOk(plain.includes(imStart) || plain.includes(imEnd), 'no control ids without parseSpecial');
  t.ok(plain.length > parsed.length + 6, `'<|im_start|>' as text takes several tokens (${plain.length} vs ${parsed.length})`);
  t.equal(tok.decode(plain), text, 'and round-trips as text');

  // adjacent, repeated and overlapping-looking specials
  const adj = tok.encode('<|im_end|><|im_end|><|im_start|><|im_end', { parseSpecial: true });
  t.same(adj.slice(0, 3), [imEnd, imEnd, imStart]);
  t.equal(tok.decode(adj.slice(3)), '<|im_end', 'an unfinished special stays text');
});

t.test('special ids and end of generation', async (t) => {
  const tok = await load(t, 'qwen2');
  if (!tok) return;
  const imEnd = tok.tokenId('<|im_end|>')!;
  const eot = tok.tokenId('<|endoftext|>')!;
  t.equal(tok.eotId, imEnd, 'EOT found by text');
  t.equal(tok.eosId, eot);
  t.equal(tok.bosId, eot);
  t.equal(tok.padId, eot);
  t.equal(tok.addBos, false, 'qwen2 adds no BOS');
  t.ok(tok.isEog(imEnd) && tok.isEog(eot));
  t.notOk(tok.isEog(tok.encode('SELECT')[0]!));
  t.same(tok.encode('hi', { addSpecial: true }), tok.encode('hi', { addSpecial: false }), 'addSpecial adds nothing for qwen2');
  t.equal(tok.tokenToPiece(tok.encode(' SELECT')[0]!), ' SELECT');
  t.equal(tok.tokenText(tok.encode(' SELECT')[0]!), 'ĠSELECT', 'vocabulary text is in the byte alphabet');
});

t.test('llama-bpe: BOS added with addSpecial', async (t) => {
  const tok = await load(t, 'llama-bpe');
  if (!tok) return;
  t.equal(tok.addBos, true);
  const withBos = tok.encode('Hello world');
  t.equal(withBos[0], tok.bosId);
  t.same(withBos.slice(1), tok.encode('Hello world', { addSpecial: false }));
  t.equal(tok.decode(withBos, { skipSpecial: true }), 'Hello world');
  t.equal(tok.eotId, tok.tokenId('<|eot_id|>'));
});

t.test('token ids out of range', async (t) => {
  const tok = await load(t, 'qwen2');
  if (!tok) return;
  for (const bad of [-1, tok.vocabSize, 1.5, Number.NaN, 2 ** 40]) {
    t.throws(() => tok.decode([1, bad]), { code: 'ERR_TOKEN_RANGE' }, `decode([${bad}])`);
    t.throws(() => tok.tokenToPiece(bad), { code: 'ERR_TOKEN_RANGE' });
    t.throws(() => tok.decodeBytes([bad]), { code: 'ERR_TOKEN_RANGE' });
  }
  t.throws(() => tok.decode([tok.vocabSize]), { message: /\[0, 151936\)/ });
  t.doesNotThrow(() => tok.decode([0, tok.vocabSize - 1]));
});

// A tiny vocabulary, to pin the BPE rules independently of any model file.
function tinyVocab(extra: Partial<TokenizerVocab> = {}): TokenizerVocab {
  const tokens = [...BYTE_TO_CHAR, 'ab', 'bc', 'abc', 'aa', 'aaaa', '<ctl>', '<user>'];
  const types = tokens.map((_, i) => (i === 261 ? 3 : i === 262 ? 4 : 1));
  return { model: 'gpt2', pre: 'qwen2', tokens, merges: ['b c', 'a b', 'a bc', 'a a', 'aa aa'], tokenTypes: types, ...extra };
}

t.test('BPE rules on a tiny vocabulary', async (t) => {
  const tok = Tokenizer.fromVocab(tinyVocab());
  const id = (s: string) => tok.tokenId(s)!;
  t.same(tok.encode('abc'), [id('abc')], 'lowest rank first: b+c, then a+bc');
  t.same(tok.encode('ab'), [id('ab')]);
  t.same(tok.encode('aaa'), [id('aa'), id('a')], 'ties merge leftmost first');
  t.same(tok.encode('aaaaa'), [id('aaaa'), id('a')]);
  t.same(tok.encode('a b'), [id('a'), id(BYTE_TO_CHAR[32]!), id('b')], 'no merge across words; no token for " b"');
  t.same(tok.encode('x<user>y'), [id('x'), id('<user>'), id('y')], 'user-defined tokens always split out');
  t.same(tok.encode('x<ctl>y', { parseSpecial: true }), [id('x'), id('<ctl>'), id('y')]);
  t.notOk(tok.encode('x<ctl>y').includes(id('<ctl>')));
  t.same(tok.encode(''), []);
  const wide = tok.encode('é');
  t.same(wide, [0xc3, 0xa9].map((b) => id(BYTE_TO_CHAR[b]!)), 'non-ASCII falls back to byte tokens');
  t.equal(tok.decode(wide), 'é');
  t.equal(tok.tokenAttr(id('<ctl>')), TokenAttr.CONTROL);
});

t.test('vocabulary validation', async (t) => {
  t.throws(() => Tokenizer.fromVocab(tinyVocab({ model: 'llama' })), { code: 'ERR_TOKENIZER', message: /expected 'gpt2'.*'llama'/ });
  t.throws(() => Tokenizer.fromVocab(tinyVocab({ pre: 'falcon' })), { code: 'ERR_TOKENIZER', message: /'falcon'.*qwen2/ });
  t.throws(() => Tokenizer.fromVocab(tinyVocab({ bosId: 10000 })), { code: 'ERR_TOKENIZER', message: /bos_token_id is 10000/ });
  t.throws(() => Tokenizer.fromVocab(tinyVocab({ tokenTypes: [1, 1] })), { code: 'ERR_TOKENIZER', message: /token_type/ });
  t.throws(() => Tokenizer.fromVocab(tinyVocab({ addBos: true })), { code: 'ERR_TOKENIZER', message: /BOS/ });
});
