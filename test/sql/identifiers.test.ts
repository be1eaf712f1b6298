import t from 'tap';
import { extractIdentifiers, jaccard, lexIdentifiers } from '../../lib/sql/identifiers.js';
import { checkReadOnlySql } from '../../lib/sql/guard.js';
import { tokenize } from '../../lib/sql/lexer.js';

const sorted = (s: Set<string>): string[] => [...s].sort();

t.test('identifier sets: aliases resolved, case folded, quotes removed', async (t) => {
  const q = 'SELECT T1.Name, count(*) AS cnt FROM Employees AS T1 JOIN departments T2 ON T1.dept_id = T2.dept_id GROUP BY T1.name ORDER BY cnt DESC';
  const expected = ['column:dept_id', 'column:name', 'table:departments', 'table:employees'];
  t.same(sorted(extractIdentifiers(q)), expected);
  t.same(sorted(lexIdentifiers(q)), expected, 'the lexer fallback agrees');
  t.same(sorted(extractIdentifiers('SELECT `name` FROM [employees] WHERE salary > (SELECT avg(salary) FROM employees)')), [
    'column:name',
    'column:salary',
    'table:employees',
  ]);
  t.same(sorted(extractIdentifiers('WITH top AS (SELECT name FROM employees) SELECT name FROM top')), ['column:name', 'table:employees'], 'WITH names are not tables');
  t.same(sorted(extractIdentifiers('SELECT name FROM employees INTERSECT SELECT title FROM projects')), [
    'column:name',
    'column:title',
    'table:employees',
    'table:projects',
  ]);
});

t.test('unparseable SQL falls back to the lexer', async (t) => {
  const ids = extractIdentifiers('SELECT name salary FROM employees WHERE WHERE');
  t.ok(ids.has('table:employees'));
  t.ok(ids.has('column:name'));
  t.same(sorted(lexIdentifiers('SELECT e.name FROM employees e, projects p WHERE p.lead_id = e.emp_id')), [
    'column:emp_id',
    'column:lead_id',
    'column:name',
    'table:employees',
    'table:projects',
  ]);
});

t.test('jaccard', async (t) => {
  t.equal(jaccard(new Set(['a', 'b']), new Set(['b', 'c'])), 1 / 3);
  t.equal(jaccard(new Set(['a']), new Set(['a'])), 1);
  t.equal(jaccard(new Set(), new Set()), 0);
  const a = extractIdentifiers('SELECT name FROM employees');
  const b = extractIdentifiers('SELECT salary FROM employees');
  t.equal(jaccard(a, b), 1 / 3, 'one shared table of three names');
});

t.test('lexer round-trips and marks quoted tokens', async (t) => {
  const sql = `SELECT "a""b", 'it''s', [x y], \`z\`, x'ff', 1.5e3, :p -- c\n/* d */`;
  const toks = tokenize(sql);
  t.equal(toks.map((x) => x.text).join(''), sql);
  t.same(toks.filter((x) => x.kind === 'dquote').map((x) => x.value), ['a"b']);
  t.same(toks.filter((x) => x.kind === 'string').map((x) => x.value), ["it's"]);
  t.same(toks.filter((x) => x.kind === 'bquote').map((x) => x.value), ['x y', 'z']);
  t.ok(tokenize("SELECT 'open").at(-1)?.unterminated);
});

t.test('guard: no false alarms on ordinary reads', async (t) => {
  for (const sql of [
    "SELECT replace(name, 'a', 'b') FROM employees",
    'SELECT "update", "delete" FROM t',
    'WITH x AS (SELECT 1) SELECT * FROM x;',
    'select count(*) from employees ;; ',
    "SELECT 'DROP TABLE t; DELETE' FROM t -- ; DROP",
  ]) {
    t.ok(checkReadOnlySql(sql, 1000).ok, sql);
  }
  const r = checkReadOnlySql('SELECT 1', 4);
  t.notOk(r.ok, 'length limit');
});
