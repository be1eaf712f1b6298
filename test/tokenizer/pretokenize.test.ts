// Word splits worked out by hand from llama.cpp's pre-tokenizer rules (llama-vocab.cpp regexes and the custom
// splitters in unicode.cpp), for the corners the llama.cpp vectors do not reach: case-insensitive contractions,
// llama.cpp's whitespace set (U+0085 is whitespace, U+FEFF is not), and digit grouping.
import t from 'tap';
import { findPreTokenizer, preTokenize } from '../../lib/tokenizer/pretokenize.js';

const qwen2 = findPreTokenizer('qwen2')!;
const show = (s: string) => s.replace(/[^\x20-\x7e]/gu, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);
const llama3 = findPreTokenizer('llama-bpe')!;

const cases: [string, string[]][] = [
  ["don't", ['don', "'t"]],
  ["'Sup 'sUP", ["'S", 'up', " '", 'sUP']],
  ["We'Ve a'lL 'REally", ['We', "'Ve", ' a', "'lL", " '", 'REally']],
  ['x\u0085\u0085y', ['x', '\u0085', '\u0085y']],
  ['x\uFEFF\uFEFFy', ['x', '\uFEFF\uFEFF', 'y']],
  ['a  \tb', ['a', '  ', '\tb']],
  ['a \n\n b', ['a', ' \n\n', ' b']],
  ['hello   ', ['hello', '   ']],
  ['x!!\n\ny', ['x', '!!\n\n', 'y']],
  [' ?.x', [' ?.', 'x']],
  ['SELECT T1.name FROM singer AS T1', ['SELECT', ' T', '1', '.name', ' FROM', ' singer', ' AS', ' T', '1']],
  ['\u3000\u3000日本', ['\u3000', '\u3000日本']],
  ['', []],
];

t.test('qwen2 splits', async (t) => {
  for (const [text, words] of cases) t.same(preTokenize(qwen2, text), words, show(text));
  t.same(preTokenize(qwen2, '12345'), ['1', '2', '3', '4', '5'], 'one digit per word');
});

t.test('llama-bpe splits', async (t) => {
  t.same(preTokenize(llama3, '12345 x1234567'), ['123', '45', ' x', '123', '456', '7'], 'digits in groups of three');
  t.same(preTokenize(llama3, "'Sup"), ["'S", 'up']);
  t.same(preTokenize(llama3, 'x\u0085\u0085y'), ['x', '\u0085', '\u0085y']);
});

t.test('unknown pre-tokenizer names', async (t) => {
  t.equal(findPreTokenizer('gpt-4o'), undefined);
  t.equal(findPreTokenizer('constructor'), undefined, 'no prototype keys');
});
