import { isWord, significant, tokenize, type Token } from './lexer.js';

/**
 * Token-level pre-check of model-written SQL, run before anything reaches SQLite. It is the first of several
 * defences (the database is also opened read-only with `PRAGMA query_only=1`, and the prepared statement must
 * report `reader && readonly`), so it may be strict: it accepts exactly one SELECT or WITH statement and rejects
 * any token that only a write, a connection change or an extension load would use.
 */
export type GuardResult = { ok: true; tokens: Token[] } | { ok: false; message: string };

/** Statement keywords that have no place in a read query (quoted, they are plain identifiers and pass). */
const FORBIDDEN_KEYWORDS = new Set([
  'insert', 'update', 'delete', 'create', 'drop', 'alter', 'attach', 'detach', 'pragma', 'vacuum', 'reindex',
  'analyze', 'begin', 'commit', 'rollback', 'savepoint', 'release', 'returning',
]);

/**
 * Functions that load code or register native pointers. SQLite lexes "name" as an identifier, and a function
 * may be called through a quoted name, so quoted tokens are checked too.
 */
const FORBIDDEN_FUNCTIONS = new Set(['load_extension', 'fts3_tokenizer', 'readfile', 'writefile', 'edit']);

// A lone surrogate cannot be encoded as UTF-8; SQLite would see U+FFFD instead of what the caller wrote.
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Checks `sql`; on success returns its tokens so callers need not lex twice. */
export function checkReadOnlySql(sql: string, maxLength: number): GuardResult {
  if (sql.length > maxLength) return { ok: false, message: `SQL is ${sql.length} characters; the limit is ${maxLength}` };
  if (sql.includes('\0')) return { ok: false, message: 'SQL holds a NUL character' };
  if (LONE_SURROGATE.test(sql)) return { ok: false, message: 'SQL holds a lone UTF-16 surrogate (invalid Unicode)' };
  const tokens = tokenize(sql);
  const sig = significant(tokens);
  // Trailing semicolons are harmless; anything after a semicolon is a second statement.
  let last = sig.length;
  while (last > 0 && sig[last - 1]?.kind === 'semi') last--;
  if (last === 0) return { ok: false, message: 'expected one SELECT or WITH statement, received no statement' };
  const body = sig.slice(0, last);
  if (body.some((t) => t.kind === 'semi')) return { ok: false, message: 'expected one statement, received several' };
  const first = body[0] as Token;
  if (!isWord(first, 'select') && !isWord(first, 'with')) {
    return { ok: false, message: `expected a SELECT or WITH statement, received one starting with "${first.text.slice(0, 40)}"` };
  }
  for (let i = 0; i < body.length; i++) {
    const t = body[i] as Token;
    if (t.kind === 'word' && FORBIDDEN_KEYWORDS.has(t.value)) {
      return { ok: false, message: `"${t.text}" is not allowed in a read-only query` };
    }
    // REPLACE is also a string function; only REPLACE INTO writes.
    if (isWord(t, 'replace') && isWord(body[i + 1], 'into')) return { ok: false, message: 'REPLACE INTO is not allowed' };
    if ((t.kind === 'word' || t.kind === 'dquote' || t.kind === 'bquote') && FORBIDDEN_FUNCTIONS.has(t.value.toLowerCase())) {
      return { ok: false, message: `function ${t.value} is not allowed` };
    }
  }
  return { ok: true, tokens };
}
