// llama.cpp's tokenizer test vectors (models/ggml-vocab-*.gguf.inp/.out), read the way tests/test-tokenizer-0.cpp
// reads them: inputs separated by "\n__ggml_vocab_test__\n", one line of space-separated ids per input, tokenized
// with add_special = false and parse_special = false.
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tokenizer } from '../../lib/tokenizer/index.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const modelsDir = join(repoRoot, 'native/.deps/llama.cpp/models');

function readCases(vocab: string): { input: string; ids: number[] }[] {
  const raw = readFileSync(`${vocab}.inp`, 'utf8');
  const outLines = readFileSync(`${vocab}.out`, 'utf8').split('\n');
  if (outLines.at(-1) === '') outLines.pop();
  const sep = '\n__ggml_vocab_test__\n';
  const inputs: string[] = [];
  let pos = 0;
  while (pos < raw.length) {
    const next = raw.indexOf(sep, pos);
    if (next < 0) {
      inputs.push(raw.slice(pos));
      break;
    }
    inputs.push(raw.slice(pos, next));
    pos = next + sep.length;
  }
  if (inputs.length !== outLines.length) {
    throw new Error(`${vocab}: ${inputs.length} inputs but ${outLines.length} output lines`);
  }
  return inputs.map((input, i) => {
    const line = outLines[i]!.trim();
    return { input, ids: line === '' ? [] : line.split(' ').map(Number) };
  });
}

for (const name of ['qwen2', 'llama-bpe']) {
  t.test(`ggml-vocab-${name}.gguf vectors`, async (t) => {
    const vocab = join(modelsDir, `ggml-vocab-${name}.gguf`);
    if (!existsSync(vocab)) {
      t.fail(`llama.cpp vocab bundle not found at ${vocab}: run \`node scripts/fetch-ggml.mjs\` (npm ci runs it)`);
      return;
    }
    const tok = await Tokenizer.fromGguf(vocab);
    t.equal(tok.pre, name);
    const cases = readCases(vocab);
    t.ok(cases.length >= 40, `${cases.length} cases`);
    let passed = 0;
    for (const [i, c] of cases.entries()) {
      const got = tok.encode(c.input, { addSpecial: false, parseSpecial: false });
      const same = got.length === c.ids.length && got.every((x, j) => x === c.ids[j]);
      if (same) passed++;
      else t.same(got, c.ids, `case ${i}: ${JSON.stringify(c.input)}`);
      const back = tok.decode(got);
      if (back !== c.input) t.equal(back, c.input, `case ${i}: decode(encode(s)) == s`);
    }
    t.equal(passed, cases.length, `all ${cases.length} cases produce llama.cpp's ids`);
  });
}
