import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { classifyHardness, countComponent1, countComponent2, countOthers, fromAst, type Hardness, type SpiderSql } from '../../lib/spider/hardness.js';
import { parseSelect } from '../../lib/sql/parse.js';
import { HAS_SPIDER, SPIDER_DIR } from '../fixtures/company-db.js';

t.test('hardness from SQL text', async (t) => {
  const cases: Array<[string, Hardness]> = [
    ['SELECT count(*) FROM singer', 'easy'],
    ['SELECT name FROM singer WHERE age > 20', 'easy'],
    ['SELECT name, country FROM singer WHERE age > 20', 'medium'],
    ['SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.id = T2.sid', 'easy'],
    ['SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.id = T2.sid WHERE T2.year = 2014', 'medium'],
    ['SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer)', 'hard'],
    ['SELECT name FROM singer WHERE age > 30 INTERSECT SELECT name FROM singer WHERE age < 40', 'hard'],
    ['SELECT name, country FROM singer WHERE age > 30 INTERSECT SELECT name, country FROM singer WHERE age < 40', 'extra'],
    ['SELECT name FROM singer EXCEPT SELECT name FROM singer WHERE age < 40', 'hard'],
    ['SELECT country, count(*) FROM singer GROUP BY country ORDER BY count(*) DESC LIMIT 1', 'hard'],
    ['SELECT name FROM singer WHERE country = "France" OR name LIKE "%a%" ORDER BY age LIMIT 3', 'extra'],
  ];
  for (const [sql, expected] of cases) t.equal(classifyHardness(sql), expected, sql);
  t.equal(classifyHardness('this is not SQL'), null);
});

t.test('component counts follow evaluation.py, quirks included', async (t) => {
  const parsed = (sql: string): SpiderSql => {
    const ast = parseSelect(sql);
    if (!ast) throw new Error(`cannot parse ${sql}`);
    return fromAst(ast);
  };
  const q = parsed('SELECT a, count(*) FROM t AS x JOIN u AS y ON x.id = y.id WHERE a NOT IN (SELECT b FROM v) OR c LIKE "z" GROUP BY a HAVING count(*) > 1 AND sum(d) > 2');
  // where, group by, one join, one OR, one LIKE.
  t.equal(countComponent1(q), 5);
  t.equal(countComponent2(q), 1, 'the nested query');
  // Aggregates: count(*) in select, NOT IN (has_agg reads not_op), 'and' in having: 3 > 1; two select
  // columns; more than one where condition.
  t.equal(countOthers(q), 3);
});

t.test('Spider dev: official counts, and the text path agrees on every example', { skip: !HAS_SPIDER && `no Spider copy at ${SPIDER_DIR}` }, async (t) => {
  const dev = JSON.parse(readFileSync(join(SPIDER_DIR, 'dev.json'), 'utf8')) as Array<{ query: string; sql: SpiderSql }>;
  t.equal(dev.length, 1034);
  const fromJson: Record<string, number> = {};
  const fromText: Record<string, number> = {};
  let disagree = 0;
  for (const ex of dev) {
    const a = classifyHardness(ex.sql) as Hardness;
    const b = classifyHardness(ex.query);
    fromJson[a] = (fromJson[a] ?? 0) + 1;
    fromText[String(b)] = (fromText[String(b)] ?? 0) + 1;
    if (a !== b) disagree++;
  }
  t.same(fromJson, { easy: 248, medium: 446, hard: 174, extra: 166 }, 'parsed-SQL path');
  t.same(fromText, { easy: 248, medium: 446, hard: 174, extra: 166 }, 'SQL-text path');
  t.equal(disagree, 0, 'per-example agreement');
});
