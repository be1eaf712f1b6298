import t from 'tap';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { StreamDecoder, Tokenizer } from '../../lib/tokenizer/index.js';
import { BYTE_TO_CHAR } from '../../lib/tokenizer/bytes.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const vocab = join(repoRoot, 'native/.deps/llama.cpp/models/ggml-vocab-qwen2.gguf');

function isCompleteUtf8(bytes: Uint8Array): boolean {
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    return true;
  } catch {
    return false;
  }
}

t.test('multi-byte characters split across tokens', async (t) => {
  if (!existsSync(vocab)) {
    t.fail(`llama.cpp vocab bundle not found at ${vocab}: run \`node scripts/fetch-ggml.mjs\``);
    return;
  }
  const tok = await Tokenizer.fromGguf(vocab);
  const texts = [
    '查询所有歌手的名字 SELECT name FROM singer',
    '🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ 🦙🦙',
    'ភាសាខ្មែរ Ελληνικά العربية 日本語のテキスト 𝔘𝔫𝔦𝔠𝔬𝔡𝔢',
  ];
  let partialTexts = 0;
  for (const text of texts) {
    const ids = tok.encode(text);
    const split = ids.filter((id) => !isCompleteUtf8(tok.tokenBytes(id)));
    if (split.length > 0) partialTexts++;
    const dec = tok.streamDecoder();
    let out = '';
    let held = 0;
    let replaced = 0;
    for (const id of ids) {
      const piece = dec.push(id);
      if (piece === '') held++;
      if (piece.includes('\uFFFD')) replaced++;
      out += piece;
    }
    t.equal(replaced, 0, 'never emits a replacement character');
    out += dec.flush();
    t.equal(out, text, 'streamed text equals the input');
    t.equal(held > 0, split.length > 0, `bytes of unfinished characters held back (${split.length} partial tokens)`);
  }
  t.equal(partialTexts, 2, 'the emoji and the Khmer/Fraktur texts have tokens holding partial characters');
});

t.test('byte by byte, flush and reset', async (t) => {
  if (!existsSync(vocab)) {
    t.fail(`llama.cpp vocab bundle not found at ${vocab}: run \`node scripts/fetch-ggml.mjs\``);
    return;
  }
  const tok = await Tokenizer.fromGguf(vocab);
  const byteIds = (s: string) => Array.from(Buffer.from(s, 'utf8'), (b) => tok.tokenId(BYTE_TO_CHAR[b]!)!);
  const emoji = byteIds('😀');
  t.equal(emoji.length, 4);
  const dec = new StreamDecoder(tok);
  t.same(emoji.map((id) => dec.push(id)), ['', '', '', '😀'], 'a 4-byte character is emitted with its last byte');
  const cjk = byteIds('表a');
  t.same(cjk.map((id) => dec.push(id)), ['', '', '表', 'a']);

  t.equal(dec.push(emoji.slice(0, 2)), '');
  t.equal(dec.flush(), '\uFFFD', 'flush turns an unfinished character into U+FFFD');
  t.equal(dec.push(tok.encode('ok')), 'ok', 'the decoder is usable after flush');

  t.equal(dec.push(emoji.slice(0, 3)), '');
  dec.reset();
  t.equal(dec.push(tok.encode('x')), 'x', 'reset drops held bytes');

  const imEnd = tok.tokenId('<|im_end|>')!;
  t.equal(tok.streamDecoder({ skipSpecial: true }).push([...tok.encode('done'), imEnd]), 'done');
  t.equal(tok.streamDecoder().push([...tok.encode('done'), imEnd]), 'done<|im_end|>');
  t.throws(() => dec.push(tok.vocabSize), { code: 'ERR_TOKEN_RANGE' });
  t.equal(tok.decode(emoji.slice(0, 3)), '\uFFFD', 'plain decode is lossy on a cut character');

  const bom = '\uFEFFSELECT 1';
  t.equal(tok.decode(tok.encode(bom)), bom, 'a leading U+FEFF survives decode (TextDecoder would strip it as a BOM)');
  const sd = tok.streamDecoder();
  t.equal(tok.encode(bom).map((id) => sd.push(id)).join('') + sd.flush(), bom, 'and streaming');
});
