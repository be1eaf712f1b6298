import tap from 'tap';
import { join } from 'node:path';
import { buildPrompt, PromptRenderer, type PromptMessage } from '../../lib/spider/prompt.js';
import { serializeSchema } from '../../lib/spider/schema.js';
import { createToyDatabase } from '../../lib/demo/toy-db.js';
import { tempDir } from '../helpers/native.js';

tap.test('PromptRenderer encodes buildPrompt(serializeSchema) and caches per database and question', (t) => {
  const dir = tempDir(t);
  const dbPath = createToyDatabase(join(dir, 'toy.sqlite'));
  const seen: PromptMessage[][] = [];
  // A stand-in encoder: code points of the rendered messages, so the ids depend on every character.
  const encoder = {
    encodeChat(messages: PromptMessage[]): number[] {
      seen.push(messages);
      return [...messages.map((m) => `${m.role}:${m.content}`).join('|')].map((c) => c.codePointAt(0)!);
    },
  };
  const r = new PromptRenderer(encoder, { sampleRows: 1, systemPrompt: 'be brief' });
  const ids = r.tokens({ question: 'How many?', dbPath });
  const expected = buildPrompt({ schema: serializeSchema(dbPath, { sampleRows: 1 }), question: 'How many?' }, { systemPrompt: 'be brief' });
  t.same(seen[0], expected);
  t.same(ids, encoder.encodeChat(expected));
  seen.length = 0;
  t.equal(r.tokens({ question: 'How many?', dbPath }), ids, 'the same question is a cache hit');
  t.equal(seen.length, 0);
  r.tokens({ question: 'Which?', dbPath });
  t.equal(seen.length, 1, 'a new question is rendered');
  t.match(seen[0]![1]!.content, /1 example rows from employee/);
  t.throws(() => new PromptRenderer(encoder, { sampleRows: -1 }), { code: 'ERR_INVALID_ARG' });
  t.throws(() => r.tokens({ question: 'x', dbPath: join(dir, 'none.sqlite') }), { code: 'ERR_DB_NOT_FOUND' });
  t.end();
});
