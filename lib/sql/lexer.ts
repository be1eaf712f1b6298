/**
 * A small SQLite tokenizer. It never throws and never recurses, so it is safe on hostile input of any size:
 * the statement guard, DISTINCT removal, double-quoted-literal handling, bare-SQL extraction and the
 * identifier fallback all work on its tokens instead of on regular expressions over raw text.
 */

export type TokenKind =
  | 'space'
  | 'comment'
  /** 'text' with '' escapes. */
  | 'string'
  /** x'00ff' */
  | 'blob'
  /** "name": an identifier in SQLite, though legacy SQL uses it for string literals. */
  | 'dquote'
  /** [name] or `name` */
  | 'bquote'
  | 'number'
  | 'word'
  /** ?, ?1, :name, @name, $name */
  | 'param'
  | 'lparen'
  | 'rparen'
  | 'comma'
  | 'dot'
  | 'semi'
  | 'op';

export interface Token {
  kind: TokenKind;
  /** Source text of the token. */
  text: string;
  /** Offset of the first character in the source. */
  start: number;
  /** Offset one past the last character. */
  end: number;
  /** Unescaped content for 'string', 'dquote' and 'bquote'; lower-cased text for 'word'; else the text. */
  value: string;
  /** True for a string, quoted name or block comment that runs to the end of the input. */
  unterminated?: boolean;
}

const isDigit = (c: number): boolean => c >= 48 && c <= 57;
const isSpace = (c: number): boolean => c === 32 || (c >= 9 && c <= 13);
// SQLite treats every byte >= 0x80 as an identifier character, so non-ASCII names lex as words.
const isWordStart = (c: number): boolean => (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c >= 128;
const isWordPart = (c: number): boolean => isWordStart(c) || isDigit(c) || c === 36;

/** Reads a quoted run starting at `i` (the opening quote); a doubled closing quote is an escaped quote. */
function readQuoted(sql: string, i: number, close: string, doubling: boolean): { end: number; value: string; unterminated: boolean } {
  let value = '';
  let j = i + 1;
  for (;;) {
    const k = sql.indexOf(close, j);
    if (k < 0) return { end: sql.length, value: value + sql.slice(j), unterminated: true };
    value += sql.slice(j, k);
    if (doubling && sql[k + 1] === close) {
      value += close;
      j = k + 2;
      continue;
    }
    return { end: k + 1, value, unterminated: false };
  }
}

/** Splits `sql` into tokens covering every character (concatenating their `text` gives back `sql`). */
export function tokenize(sql: string): Token[] {
  const out: Token[] = [];
  const n = sql.length;
  let i = 0;
  const push = (kind: TokenKind, end: number, value?: string, unterminated = false): void => {
    const text = sql.slice(i, end);
    const tok: Token = { kind, text, start: i, end, value: value ?? text };
    if (unterminated) tok.unterminated = true;
    out.push(tok);
    i = end;
  };
  while (i < n) {
    const c = sql.charCodeAt(i);
    const d = i + 1 < n ? sql.charCodeAt(i + 1) : -1;
    if (isSpace(c)) {
      let j = i + 1;
      while (j < n && isSpace(sql.charCodeAt(j))) j++;
      push('space', j);
    } else if (c === 45 && d === 45) {
      const k = sql.indexOf('\n', i);
      push('comment', k < 0 ? n : k + 1);
    } else if (c === 47 && d === 42) {
      const k = sql.indexOf('*/', i + 2);
      push('comment', k < 0 ? n : k + 2, undefined, k < 0);
    } else if (c === 39) {
      const q = readQuoted(sql, i, "'", true);
      push('string', q.end, q.value, q.unterminated);
    } else if (c === 34) {
      const q = readQuoted(sql, i, '"', true);
      push('dquote', q.end, q.value, q.unterminated);
    } else if (c === 96) {
      const q = readQuoted(sql, i, '`', true);
      push('bquote', q.end, q.value, q.unterminated);
    } else if (c === 91) {
      const q = readQuoted(sql, i, ']', false);
      push('bquote', q.end, q.value, q.unterminated);
    } else if ((c === 120 || c === 88) && d === 39) {
      const q = readQuoted(sql, i + 1, "'", false);
      push('blob', q.end, undefined, q.unterminated);
    } else if (isDigit(c) || (c === 46 && isDigit(d))) {
      let j = i;
      if (c === 48 && (d === 120 || d === 88)) {
        j += 2;
        while (j < n && /[0-9a-fA-F_]/.test(sql[j] as string)) j++;
      } else {
        while (j < n && (isDigit(sql.charCodeAt(j)) || sql[j] === '_')) j++;
        if (sql[j] === '.') {
          j++;
          while (j < n && (isDigit(sql.charCodeAt(j)) || sql[j] === '_')) j++;
        }
        const signed = sql[j + 1] === '+' || sql[j + 1] === '-';
        if ((sql[j] === 'e' || sql[j] === 'E') && isDigit(sql.charCodeAt(j + (signed ? 2 : 1)))) {
          j += signed ? 2 : 1;
          while (j < n && isDigit(sql.charCodeAt(j))) j++;
        }
      }
      push('number', j);
    } else if (isWordStart(c)) {
      let j = i + 1;
      while (j < n && isWordPart(sql.charCodeAt(j))) j++;
      push('word', j, sql.slice(i, j).toLowerCase());
    } else if (c === 63 || c === 58 || c === 64 || c === 36) {
      let j = i + 1;
      while (j < n && isWordPart(sql.charCodeAt(j))) j++;
      push(j > i + 1 || c === 63 ? 'param' : 'op', j);
    } else if (c === 40) push('lparen', i + 1);
    else if (c === 41) push('rparen', i + 1);
    else if (c === 44) push('comma', i + 1);
    else if (c === 46) push('dot', i + 1);
    else if (c === 59) push('semi', i + 1);
    else {
      const two = sql.slice(i, i + 2);
      const len = ['<=', '>=', '<>', '!=', '==', '||', '<<', '>>', '->'].includes(two) ? (sql.slice(i, i + 3) === '->>' ? 3 : 2) : 1;
      push('op', i + len);
    }
  }
  return out;
}

/** Tokens that carry meaning: no whitespace, no comments. */
export function significant(tokens: readonly Token[]): Token[] {
  return tokens.filter((t) => t.kind !== 'space' && t.kind !== 'comment');
}

/** True when `t` is the bare keyword or word `word` (lower-case). */
export function isWord(t: Token | undefined, word: string): boolean {
  return t !== undefined && t.kind === 'word' && t.value === word;
}

/** Quotes `s` as an SQL string literal. */
export function quoteString(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}
