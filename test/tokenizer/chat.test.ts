import t from 'tap';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CHATML_TEMPLATE, Tokenizer, renderChat, renderChatForTokenizer } from '../../lib/tokenizer/index.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const vocab = join(repoRoot, 'native/.deps/llama.cpp/models/ggml-vocab-qwen2.gguf');

const conversation = [
  { role: 'system', content: 'You write SQLite queries.' },
  { role: 'user', content: 'How many singers are there?' },
];
const expectedChatML =
  '<|im_start|>system\nYou write SQLite queries.<|im_end|>\n' +
  '<|im_start|>user\nHow many singers are there?<|im_end|>\n' +
  '<|im_start|>assistant\n';

t.test('ChatML fallback', async (t) => {
  t.equal(renderChat(null, conversation), expectedChatML, 'system + user + generation prompt');
  t.equal(renderChat(undefined, conversation), expectedChatML);
  t.equal(renderChat('', conversation), expectedChatML);
  t.equal(renderChat(CHATML_TEMPLATE, conversation, { addGenerationPrompt: false }), expectedChatML.slice(0, -'<|im_start|>assistant\n'.length));
  t.equal(renderChat(null, []), '<|im_start|>assistant\n');
  t.equal(
    renderChat(null, [...conversation, { role: 'assistant', content: '```sql\nSELECT count(*) FROM singer\n```' }], { addGenerationPrompt: false }),
    expectedChatML.replace(/<\|im_start\|>assistant\n$/, '') + '<|im_start|>assistant\n```sql\nSELECT count(*) FROM singer\n```<|im_end|>\n',
  );
});

t.test("the Qwen2 vocabulary's own template", async (t) => {
  if (!existsSync(vocab)) {
    t.fail(`llama.cpp vocab bundle not found at ${vocab}: run \`node scripts/fetch-ggml.mjs\``);
    return;
  }
  const tok = await Tokenizer.fromGguf(vocab);
  t.type(tok.chatTemplate, 'string', 'ggml-vocab-qwen2.gguf carries tokenizer.chat_template');
  t.equal(renderChatForTokenizer(tok, conversation), expectedChatML);
  const userOnly = renderChatForTokenizer(tok, [conversation[1]!]);
  t.equal(
    userOnly,
    '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHow many singers are there?<|im_end|>\n<|im_start|>assistant\n',
    'its default system message',
  );
  const ids = tok.encode(expectedChatML, { parseSpecial: true });
  const imStart = tok.tokenId('<|im_start|>')!;
  const imEnd = tok.tokenId('<|im_end|>')!;
  t.equal(ids.filter((x) => x === imStart).length, 3);
  t.equal(ids.filter((x) => x === imEnd).length, 2);
  t.equal(ids[0], imStart);
  t.same(ids.slice(-3), [imStart, ...tok.encode('assistant\n')]);
  t.equal(tok.decode(ids), expectedChatML);
});

t.test('bos/eos tokens and extra variables reach the template', async (t) => {
  const tpl = "{{ bos_token }}{% for m in messages %}[{{ m.role }}|{{ m.content }}]{% endfor %}{{ eos_token }}{{ extra }}";
  t.equal(renderChat(tpl, conversation.slice(1), { bosToken: '<s>', eosToken: '</s>', variables: { extra: '!' } }), '<s>[user|How many singers are there?]</s>!');
  t.equal(
    renderChat('{{ messages | length }}', conversation, { variables: { messages: [] } }),
    '2',
    'variables cannot override messages',
  );
});

t.test('template errors', async (t) => {
  t.throws(() => renderChat('{% for m in messages %}', conversation), { code: 'ERR_TEMPLATE', message: /parse/ });
  t.throws(() => renderChat('{{ ', conversation), { code: 'ERR_TEMPLATE' });
  t.throws(
    () => renderChat("{% if messages[0].role != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}", conversation),
    { code: 'ERR_TEMPLATE', message: /first message must be user/ },
  );
  t.throws(() => renderChat('{{ messages[0].content.nope() }}', conversation), { code: 'ERR_TEMPLATE', message: /render/ });
  t.throws(() => renderChat(null, [{ role: 'user' } as never]), { code: 'ERR_INVALID_ARG', message: /messages\[0\]/ });
  t.throws(() => renderChat(null, 'hi' as never), { code: 'ERR_INVALID_ARG' });
});
