import t from 'tap';
import { extractSql, hasFencedSql } from '../../lib/sql/extract.js';

t.test('fenced sql block: the last one wins', async (t) => {
  const text = 'First try:\n```sql\nSELECT a FROM t;\n```\nBetter:\n```SQL\nSELECT b FROM t;\n```\n';
  t.same(extractSql(text), { sql: 'SELECT b FROM t', reason: 'fenced_sql' });
  t.ok(hasFencedSql(text));
  t.same(extractSql('```sqlite\nSELECT 1\n```'), { sql: 'SELECT 1', reason: 'fenced_sql' });
});

t.test('a sql block beats a later untagged block', async (t) => {
  const text = '```sql\nSELECT a FROM t\n```\nOutput:\n```\n| a |\n```';
  t.same(extractSql(text), { sql: 'SELECT a FROM t', reason: 'fenced_sql' });
});

t.test('untagged or other fenced block', async (t) => {
  t.same(extractSql('Answer:\n```\nSELECT name FROM employees\n```'), { sql: 'SELECT name FROM employees', reason: 'fenced' });
  t.notOk(hasFencedSql('```\nSELECT 1\n```'));
  t.same(extractSql('```python\nprint(1)\n```').reason, 'fenced');
});

t.test('bare statements', async (t) => {
  t.same(extractSql('The query is SELECT name FROM t WHERE x IN (SELECT y FROM u); that is all.'), {
    sql: 'SELECT name FROM t WHERE x IN (SELECT y FROM u)',
    reason: 'bare',
  });
  t.same(extractSql('select a from t\n\nThen\nSELECT b FROM u'), { sql: 'SELECT b FROM u', reason: 'bare' });
  t.same(extractSql('We start with the table.\nwith c AS (select 1 AS x) select x from c'), {
    sql: 'with c AS (select 1 AS x) select x from c',
    reason: 'bare',
  });
  t.same(extractSql('```sql\nSELECT 1 FROM t'), { sql: 'SELECT 1 FROM t', reason: 'bare' }, 'an unclosed fence is not a block');
  t.same(extractSql('<answer>SELECT a FROM t WHERE b < 2</answer>'), { sql: 'SELECT a FROM t WHERE b < 2', reason: 'bare' });
  t.same(extractSql('```sql\nSELECT a FROM t\n``` (done)'), { sql: 'SELECT a FROM t', reason: 'bare' }, 'stops at a fence');
});

t.test('nothing to extract', async (t) => {
  t.same(extractSql('I would select the largest department, with care.'), { sql: null, reason: 'none' });
  t.same(extractSql(''), { sql: null, reason: 'none' });
  t.same(extractSql('```sql\n\n```').reason, 'none', 'an empty block is no block');
});
