// decode(encode(s)) == s on every Spider question and gold query. Spider is located through SPIDER_DIR or
// ../shared/spider next to the repository; the test is skipped when it is absent (the data is never copied here).
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tokenizer } from '../../lib/tokenizer/index.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const spiderDir = process.env.SPIDER_DIR ?? resolve(repoRoot, '../shared/spider');
const vocab = join(repoRoot, 'native/.deps/llama.cpp/models/ggml-vocab-qwen2.gguf');
const files = ['train_spider.json', 'dev.json'].map((f) => join(spiderDir, f));

t.test('Spider questions and queries round-trip', { skip: files.some((f) => !existsSync(f)) && `Spider not found in ${spiderDir} (set SPIDER_DIR)` }, async (t) => {
  if (!existsSync(vocab)) {
    t.fail(`llama.cpp vocab bundle not found at ${vocab}: run \`node scripts/fetch-ggml.mjs\``);
    return;
  }
  const tok = await Tokenizer.fromGguf(vocab);
  const texts: string[] = [];
  for (const f of files) {
    for (const ex of JSON.parse(readFileSync(f, 'utf8')) as { question: string; query: string }[]) {
      texts.push(ex.question, ex.query);
    }
  }
  t.ok(texts.length > 10000, `${texts.length} texts`);
  let failures = 0;
  let tokens = 0;
  let bytes = 0;
  const t0 = performance.now();
  for (const s of texts) {
    const ids = tok.encode(s, { addSpecial: false });
    tokens += ids.length;
    bytes += Buffer.byteLength(s);
    const back = tok.decode(ids);
    if (back !== s && failures++ < 10) t.equal(back, s, 'round trip');
  }
  const ms = performance.now() - t0;
  t.equal(failures, 0, `all ${texts.length} texts round-trip`);
  t.ok(tokens > bytes / 8 && tokens < bytes, `plausible compression: ${tokens} tokens for ${bytes} bytes`);
  t.comment(`encode+decode: ${tokens} tokens in ${ms.toFixed(0)} ms (${((tokens / ms) * 1000).toFixed(0)} tokens/s)`);
});
