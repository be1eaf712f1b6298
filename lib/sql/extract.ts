/** How the SQL was found in a completion. */
export type ExtractionReason = 'fenced_sql' | 'fenced' | 'bare' | 'none';

export interface ExtractedSql {
  /** The SQL text, trimmed and without trailing semicolons; null when none was found. */
  sql: string | null;
  reason: ExtractionReason;
}

// A closed fence: ``` or ~~~ with an optional info string, the body, and the same fence alone on a line.
const FENCE = /^[ \t]*(`{3,}|~{3,})[ \t]*([^\n`]*)\n([\s\S]*?)\n[ \t]*\1[ \t]*$/gm;
const SQL_INFO = /^(sql|sqlite)\b/i;

function clean(sql: string): string {
  return sql.trim().replace(/[\s;]+$/, '');
}

/**
 * Finds the SQL in a model completion: the last fenced block tagged sql (or sqlite); else the last fenced block
 * of any other kind; else the last bare statement, which starts at SELECT or WITH (upper case anywhere, any
 * case at the start of a line) and ends at a semicolon, a blank line, a fence, a closing tag (`</answer>`) or the
 * end. An unclosed fence (a completion cut at the token limit) is not a block; its SQL can still be found bare.
 */
export function extractSql(completion: string): ExtractedSql {
  let lastSql: string | null = null;
  let lastAny: string | null = null;
  for (const m of completion.matchAll(FENCE)) {
    const body = clean(m[3] ?? '');
    if (body === '') continue;
    if (SQL_INFO.test((m[2] ?? '').trim())) lastSql = body;
    else lastAny = body;
  }
  if (lastSql !== null) return { sql: lastSql, reason: 'fenced_sql' };
  if (lastAny !== null) return { sql: lastAny, reason: 'fenced' };
  const bare = lastBareStatement(completion);
  return bare === null ? { sql: null, reason: 'none' } : { sql: bare, reason: 'bare' };
}

/** True when the completion holds a closed, non-empty fenced block tagged sql. */
export function hasFencedSql(completion: string): boolean {
  return extractSql(completion).reason === 'fenced_sql';
}

const BARE_START = /\b(?:select|with)\b/gi;

function lastBareStatement(text: string): string | null {
  let found: string | null = null;
  BARE_START.lastIndex = 0;
  for (let m = BARE_START.exec(text); m; m = BARE_START.exec(text)) {
    const word = m[0];
    // Upper case anywhere; other cases only at a line start (prose says "select" and "with" all the time).
    const atLineStart = text.slice(text.lastIndexOf('\n', m.index - 1) + 1, m.index).trim() === '';
    if (word !== word.toUpperCase() && !atLineStart) continue;
    const rest = text.slice(m.index);
    // Ends at a semicolon, a blank line, a code fence or a closing tag such as </answer>.
    const end = rest.search(/;|\n[ \t]*\n|```|~~~|<\//);
    const stmt = clean(end < 0 ? rest : rest.slice(0, end));
    // WITH opens a statement only as WITH [RECURSIVE] name [(columns)] AS (.
    if (/^with\b/i.test(stmt) && !/^with\s+(recursive\s+)?[\w"`[\]]+(\s*\([^)]*\))?\s+as\s*\(/i.test(stmt)) continue;
    found = stmt;
    // The statement's own subqueries are not new statements.
    BARE_START.lastIndex = m.index + (end < 0 ? rest.length : end);
  }
  return found;
}
