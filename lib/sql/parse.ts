import sqliteParser from 'node-sql-parser/build/sqlite.js';
import { isWord, tokenize, type Token } from './lexer.js';

/** A node of node-sql-parser's AST, read structurally (its published types are mostly `any`). */
export type AstNode = { readonly [key: string]: unknown };

export const isNode = (v: unknown): v is AstNode => typeof v === 'object' && v !== null && !Array.isArray(v);

const parser = new sqliteParser.Parser();

/** Longest SQL handed to the parser: it is a recursive-descent parser, and deep or huge input costs time. */
const MAX_PARSE_LENGTH = 20_000;

/**
 * Parses one SELECT statement with node-sql-parser's sqlite dialect; null when it cannot.
 *
 * That dialect knows UNION but not INTERSECT or EXCEPT, so those words are parsed as UNION: the callers here
 * (hardness counts, identifier sets) need where a compound is, not which operator it uses. As in Spider's own
 * parser, a trailing ORDER BY or LIMIT of a compound belongs to its last SELECT.
 */
export function parseSelect(sql: string): AstNode | null {
  if (sql.length > MAX_PARSE_LENGTH) return null;
  const tokens = tokenize(sql);
  const render = (quoteTables: boolean): string =>
    tokens
      .map((t, i) => {
        if (isWord(t, 'intersect') || isWord(t, 'except')) return 'UNION';
        // The dialect reads `name` but not [name].
        if (t.kind === 'bquote') return `\`${t.value.replace(/`/g, '``')}\``;
        // Table names that are keywords of the parser (Spider has a table named "show") parse once quoted.
        if (quoteTables && t.kind === 'word' && precededBy(tokens, i, ['from', 'join'])) return `\`${t.text}\``;
        return t.text;
      })
      .join('');
  return astify(render(false)) ?? astify(render(true));
}

function precededBy(tokens: readonly Token[], i: number, words: readonly string[]): boolean {
  for (let j = i - 1; j >= 0; j--) {
    const t = tokens[j] as Token;
    if (t.kind === 'space' || t.kind === 'comment') continue;
    return t.kind === 'word' && words.includes(t.value);
  }
  return false;
}

function astify(text: string): AstNode | null {
  try {
    const ast: unknown = parser.astify(text, { database: 'sqlite' });
    const one = Array.isArray(ast) ? (ast.length === 1 ? ast[0] : null) : ast;
    return isNode(one) && one['type'] === 'select' ? one : null;
  } catch {
    // Syntax errors, and RangeError from very deep nesting: both mean "no parse".
    return null;
  }
}

/** The SELECT inside a subquery node (`{ ast }` wrappers and expression lists of one subquery), if any. */
export function subquery(v: unknown): AstNode | null {
  if (!isNode(v)) return null;
  if (v['type'] === 'select') return v;
  if (isNode(v['ast']) && v['ast']['type'] === 'select') return v['ast'];
  if (v['type'] === 'expr_list' && Array.isArray(v['value']) && v['value'].length === 1) return subquery(v['value'][0]);
  if (isNode(v['expr'])) return subquery(v['expr']);
  return null;
}
