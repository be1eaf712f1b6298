import t from 'tap';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SpiderDataset, shuffleWithSeed, spiderDbPath, type SpiderTables } from '../../lib/spider/dataset.js';
import { buildPrompt, DEFAULT_SYSTEM_PROMPT } from '../../lib/spider/prompt.js';
import { serializeSchema } from '../../lib/spider/schema.js';
import { HAS_SPIDER, makeFixtureRoot, SPIDER_DIR } from '../fixtures/company-db.js';

const fx = makeFixtureRoot();
t.teardown(fx.remove);

const TRAIN = [
  { question: 'How many employees?', query: 'SELECT count(*) FROM employees', db_id: 'company' },
  { question: 'Department names?', query: 'SELECT name FROM departments', db_id: 'company' },
  { question: 'Secrets?', query: 'SELECT v FROM secrets', db_id: 'other' },
  { question: 'Lost?', query: 'SELECT 1', db_id: 'missing_db' },
  { question: 'Lost again?', query: 'SELECT 2', db_id: 'missing_db' },
  { question: 'Gone?', query: 'SELECT 3', db_id: 'gone' },
];
const OTHERS = [{ question: 'Projects?', query: 'SELECT title FROM projects', db_id: 'company' }];
const TABLES: SpiderTables[] = [
  {
    db_id: 'company',
    table_names_original: ['departments', 'employees', 'projects'],
    column_names_original: [[-1, '*'], [0, 'dept_id'], [1, 'emp_id'], [1, 'dept_id'], [2, 'lead_id']],
    column_types: ['text', 'number', 'number', 'number', 'number'],
    primary_keys: [1, 2],
    foreign_keys: [[3, 1], [4, 2]],
  },
];
writeFileSync(join(fx.root, 'train_spider.json'), JSON.stringify(TRAIN));
writeFileSync(join(fx.root, 'train_others.json'), JSON.stringify(OTHERS));
writeFileSync(join(fx.root, 'dev.json'), JSON.stringify(TRAIN.slice(0, 2)));
writeFileSync(join(fx.root, 'tables.json'), JSON.stringify(TABLES));

t.test('load: both train files, missing databases skipped with one warning', async (t) => {
  const warnings: string[] = [];
  const ds = await SpiderDataset.load({ root: fx.root, split: 'train', onWarning: (m) => warnings.push(m) });
  t.equal(ds.length, 4, 'three usable from train_spider.json and one from train_others.json');
  t.same(ds.skipped, { count: 3, dbIds: ['gone', 'missing_db'] });
  t.equal(warnings.length, 1, 'one warning');
  t.match(warnings[0], /skipped 3 examples.*gone, missing_db/);
  t.same(ds.examples.map((e) => e.dbId), ['company', 'company', 'other', 'company']);
  t.equal(ds.examples[0]?.dbPath, fx.companyDb);
  t.equal(ds.tables.get('company')?.foreign_keys.length, 2);
  t.equal(ds.dbPath('company'), fx.companyDb);
  t.throws(() => ds.dbPath('missing_db'), { code: 'ERR_DB_NOT_FOUND', message: /missing_db/ });
  const dev = await SpiderDataset.load({ root: fx.root, split: 'dev', onWarning: () => t.fail('no warning expected') });
  t.equal(dev.length, 2);
});

t.test('seeded shuffle and maxSamples', async (t) => {
  const quiet = { onWarning: () => undefined };
  const a = await SpiderDataset.load({ root: fx.root, split: 'train', shuffleSeed: 7, ...quiet });
  const b = await SpiderDataset.load({ root: fx.root, split: 'train', shuffleSeed: 7, ...quiet });
  t.same(a.examples, b.examples, 'same seed, same order');
  const items = Array.from({ length: 50 }, (_, i) => i);
  t.same(shuffleWithSeed(items, 1), shuffleWithSeed(items, 1));
  t.not(shuffleWithSeed(items, 1).join(), shuffleWithSeed(items, 2).join(), 'different seeds differ');
  t.same([...shuffleWithSeed(items, 3)].sort((x, y) => x - y), items, 'a permutation');
  const few = await SpiderDataset.load({ root: fx.root, split: 'train', maxSamples: 2, shuffleSeed: 7, ...quiet });
  t.same(few.examples, a.examples.slice(0, 2), 'maxSamples takes the first N after shuffling');
});

t.test('bad input is a clear error', async (t) => {
  await t.rejects(SpiderDataset.load({ root: join(fx.root, 'nowhere'), split: 'dev' }), { code: 'ERR_DATA' });
  await t.rejects(SpiderDataset.load({ root: fx.root, split: 'test' as 'dev' }), { code: 'ERR_INVALID_ARG' });
});

t.test('schema serialization and prompt', async (t) => {
  const plain = serializeSchema(fx.companyDb);
  t.match(plain, /CREATE TABLE departments/);
  t.match(plain, /CREATE TABLE projects/);
  t.match(plain, /-- employees\.dept_id = departments\.dept_id/);
  t.match(plain, /-- projects\.lead_id = employees\.emp_id/);
  t.notMatch(plain, /example rows/);
  const rows = serializeSchema(fx.companyDb, { sampleRows: 2 });
  t.match(rows, /2 example rows from employees:\nemp_id \| name \| dept_id \| salary \| bonus \| manager_id\n1 \| Ada \| 1 \| 120000 \| 1000 \| NULL/);
  const noFk = serializeSchema(fx.companyDb, { foreignKeys: false });
  t.notMatch(noFk, /Foreign keys/);
  t.throws(() => serializeSchema(join(fx.root, 'nope.sqlite')), { code: 'ERR_DB_NOT_FOUND' });

  const messages = buildPrompt({ schema: plain, question: 'How many employees are there?' });
  t.same(messages.map((m) => m.role), ['system', 'user']);
  t.equal(messages[0]?.content, DEFAULT_SYSTEM_PROMPT);
  t.match(messages[1]?.content, /CREATE TABLE employees[\s\S]*Question: How many employees are there\?[\s\S]*```sql/);
  t.equal(buildPrompt({ schema: 's', question: 'q' }, { systemPrompt: 'Be brief.' })[0]?.content, 'Be brief.');
});

t.test('Spider dev: the examples whose database is present, the others reported', { skip: !HAS_SPIDER && `no Spider copy at ${SPIDER_DIR}` }, async (t) => {
  // The expectation comes from the files of this copy (some copies lack a database, e.g. wta_1), not from one copy.
  const raw = JSON.parse(readFileSync(join(SPIDER_DIR, 'dev.json'), 'utf8')) as Array<{ db_id: string }>;
  t.equal(raw.length, 1034, 'Spider dev has 1034 examples');
  const missing = new Map<string, number>();
  for (const ex of raw) if (!existsSync(spiderDbPath(SPIDER_DIR, ex.db_id))) missing.set(ex.db_id, (missing.get(ex.db_id) ?? 0) + 1);
  const nMissing = [...missing.values()].reduce((a, b) => a + b, 0);
  const warnings: string[] = [];
  const dev = await SpiderDataset.load({ root: SPIDER_DIR, split: 'dev', onWarning: (m) => warnings.push(m) });
  t.equal(dev.length, raw.length - nMissing, `${raw.length - nMissing} usable`);
  t.same(dev.examples.map((e) => e.dbId), raw.filter((ex) => !missing.has(ex.db_id)).map((ex) => ex.db_id), 'in file order');
  t.same(dev.skipped, { count: nMissing, dbIds: [...missing.keys()].sort() });
  t.equal(warnings.length, nMissing > 0 ? 1 : 0, 'one warning when examples are skipped, none otherwise');
  for (const dbId of missing.keys()) t.throws(() => dev.dbPath(dbId), { code: 'ERR_DB_NOT_FOUND', message: new RegExp(dbId) });
  t.ok(dev.examples.every((e) => e.sql), 'dev.json carries parsed SQL');
  const schema = serializeSchema(dev.dbPath('concert_singer'), { sampleRows: 1, tables: dev.tables.get('concert_singer') });
  t.match(schema, /CREATE TABLE "?singer"?/i);
});
