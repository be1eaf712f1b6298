import { isWord, significant, tokenize, type Token } from './lexer.js';
import { isNode, parseSelect, type AstNode } from './parse.js';

/**
 * The tables and columns a query uses, as one set of strings `table:<name>` and `column:<name>`: lower-cased,
 * unquoted, table aliases and result-column aliases left out (an alias is not a schema name), columns without
 * their qualifier (so `T1.name` and `name` agree). Built from node-sql-parser's sqlite AST; when that cannot
 * parse the text, a lexer pass stands in (see {@link lexIdentifiers}).
 */
export function extractIdentifiers(sql: string): Set<string> {
  const ast = parseSelect(sql);
  return ast ? astIdentifiers(ast) : lexIdentifiers(sql);
}

/** Jaccard overlap |A ∩ B| / |A ∪ B| of two sets; 0 when both are empty. */
export function jaccard(a: ReadonlySet<string>, b: ReadonlySet<string>): number {
  let inter = 0;
  for (const x of a) if (b.has(x)) inter++;
  const union = a.size + b.size - inter;
  return union === 0 ? 0 : inter / union;
}

function astIdentifiers(root: AstNode): Set<string> {
  const tables = new Set<string>();
  const ctes = new Set<string>();
  const aliases = new Set<string>();
  const columns = new Set<string>();
  // An explicit stack, not recursion: deeply nested input must not overflow the call stack.
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const v = stack.pop();
    if (Array.isArray(v)) {
      stack.push(...v);
      continue;
    }
    if (!isNode(v)) continue;
    if (v['type'] === 'column_ref') {
      const col = columnName(v['column']);
      if (col && col !== '*') columns.add(col.toLowerCase());
    } else if (typeof v['table'] === 'string' && 'db' in v) {
      // A FROM entry: `table` is the real name, `as` its alias.
      tables.add(v['table'].toLowerCase());
    }
    if (typeof v['as'] === 'string') aliases.add(v['as'].toLowerCase());
    if (Array.isArray(v['with'])) {
      for (const w of v['with']) if (isNode(w) && isNode(w['name'])) ctes.add(String(w['name']['value']).toLowerCase());
    }
    for (const [key, child] of Object.entries(v)) {
      // tableList/columnList are the parser's own summaries, with aliases unresolved.
      if (key !== 'tableList' && key !== 'columnList' && typeof child === 'object' && child !== null) stack.push(child);
    }
  }
  const out = new Set<string>();
  for (const t of tables) if (!ctes.has(t)) out.add(`table:${t}`);
  for (const c of columns) if (!aliases.has(c)) out.add(`column:${c}`);
  return out;
}

function columnName(c: unknown): string | null {
  if (typeof c === 'string') return c;
  // Newer node-sql-parser versions wrap names: { expr: { type: 'default', value: 'name' } }.
  if (isNode(c) && isNode(c['expr']) && typeof c['expr']['value'] === 'string') return c['expr']['value'];
  return null;
}

const KEYWORDS = new Set(
  ('select from where group by order having limit offset join inner left right outer cross natural on using as and or not ' +
    'in is null like glob between exists case when then else end distinct all union intersect except asc desc with ' +
    'recursive collate cast escape true false values current_date current_time current_timestamp').split(' '),
);
const NAME_KINDS = new Set(['word', 'dquote', 'bquote']);

/**
 * Identifier sets from tokens alone, for SQL the parser rejects (models write plenty of it): a name after FROM,
 * JOIN or a comma in a FROM list is a table, and the name after it (with or without AS) its alias; `x.y` is
 * column y; `name AS (` names a WITH table; any other name that is not a keyword, a function call or an alias
 * is a column. Double-quoted tokens
 * count as names only after FROM/JOIN or before a dot, since Spider's SQL uses "..." for strings.
 */
export function lexIdentifiers(sql: string): Set<string> {
  const toks = significant(tokenize(sql));
  const tables = new Set<string>();
  const aliases = new Set<string>();
  const columns = new Set<string>();
  const ctes = new Set<string>();
  const name = (t: Token): string => (t.kind === 'word' ? t.text : t.value).toLowerCase();
  let inFrom = false;
  for (let i = 0; i < toks.length; i++) {
    const t = toks[i] as Token;
    const prev = toks[i - 1];
    const next = toks[i + 1];
    if (t.kind === 'word' && KEYWORDS.has(t.value)) {
      if (t.value === 'from' || t.value === 'join') inFrom = true;
      else if (!['as', 'on', 'inner', 'left', 'right', 'outer', 'cross', 'natural'].includes(t.value)) inFrom = false;
      if (t.value === 'as' && next && NAME_KINDS.has(next.kind)) {
        aliases.add(name(next));
        i++;
      }
      continue;
    }
    if (!NAME_KINDS.has(t.kind)) {
      if (t.kind === 'lparen' || t.kind === 'rparen') inFrom = false;
      continue;
    }
    // name [(columns)] AS ( ... ) names a common table expression.
    if (isWord(next, 'as') && toks[i + 2]?.kind === 'lparen') {
      ctes.add(name(t));
      continue;
    }
    const startsTable = isWord(prev, 'from') || isWord(prev, 'join') || (inFrom && prev?.kind === 'comma');
    if (startsTable) {
      tables.add(name(t));
      if (next && next.kind === 'word' && !KEYWORDS.has(next.value)) {
        aliases.add(name(next));
        i++;
      }
      continue;
    }
    if (next?.kind === 'dot') {
      const col = toks[i + 2];
      if (col && NAME_KINDS.has(col.kind)) columns.add(name(col));
      i += 2;
      continue;
    }
    if (next?.kind === 'lparen' || t.kind === 'dquote') continue;
    columns.add(name(t));
  }
  const out = new Set<string>();
  for (const t of tables) if (!ctes.has(t)) out.add(`table:${t}`);
  for (const c of columns) if (!aliases.has(c) && !ctes.has(c)) out.add(`column:${c}`);
  return out;
}
