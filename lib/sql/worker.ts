/**
 * The SQL worker: a separate Node process (not a worker thread) that runs queries with better-sqlite3.
 *
 * Why a process: a query such as `SELECT count(*) FROM t a, t b, t c, t d` loops inside SQLite's C code without
 * ever returning to JavaScript, and better-sqlite3 exposes neither `sqlite3_interrupt` nor a progress handler.
 * `worker.terminate()` only takes effect when JavaScript runs again, so a worker thread stuck in such a query
 * cannot be stopped, and it even keeps `process.exit()` from completing. A child process can always be killed.
 *
 * The source is plain CommonJS kept in a string, so the same code runs whether the library is loaded from its
 * TypeScript sources (tests) or from the compiled `dist/`, with no loader in the child.
 */

/** Parent -> worker: load better-sqlite3 from this path, then answer `ready`. */
export interface WorkerInit {
  type: 'init';
  modulePath: string;
}

/** Parent -> worker: run one statement that already passed the token-level guard. */
export interface WorkerRun {
  type: 'run';
  id: number;
  dbPath: string;
  sql: string;
  /** Double-quoted tokens of `sql` as [start, end, unescaped content], for the legacy-literal fallback. */
  dquotes: Array<[number, number, string]>;
  maxRows: number;
  maxBytes: number;
}

/** Worker -> parent. Rows hold null, number, bigint (outside the safe-integer range), string or Uint8Array. */
export type WorkerReply =
  | { type: 'ready' }
  | { type: 'result'; id: number; ok: true; columns: string[]; rows: unknown[][] }
  | { type: 'result'; id: number; ok: false; code: string; message: string };

export const WORKER_SOURCE = String.raw`'use strict';
let Database = null;
// Connections are cached per database file, least recently used first; each keeps its prepared statements
// (a GRPO group often repeats a query, and the gold query of a question runs once per sample).
const connections = new Map();
const MAX_CONNECTIONS = 32;
const MAX_STATEMENTS = 256;
const DQS_ERROR = /^no such column: "([\s\S]*)" - should this be a string literal in single-quotes\?$/;
const MIN_SAFE = BigInt(Number.MIN_SAFE_INTEGER);
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

function connect(path) {
  let conn = connections.get(path);
  if (conn) {
    connections.delete(path);
  } else {
    const db = new Database(path, { readonly: true, fileMustExist: true });
    db.pragma('query_only = 1');
    // Functions named in the schema (views, triggers) may not run with side effects.
    db.pragma('trusted_schema = 0');
    db.unsafeMode(false);
    conn = { db, statements: new Map() };
  }
  connections.set(path, conn);
  if (connections.size > MAX_CONNECTIONS) {
    const [oldest, old] = connections.entries().next().value;
    connections.delete(oldest);
    old.db.close();
  }
  return conn;
}

function statement(conn, m) {
  let stmt = conn.statements.get(m.sql);
  if (stmt) {
    conn.statements.delete(m.sql);
  } else {
    stmt = prepare(conn.db, m);
    // raw() throws on statements that return no data; run() rejects those below.
    if (stmt.reader) {
      stmt.raw(true);
      stmt.safeIntegers(true);
    }
  }
  conn.statements.set(m.sql, stmt);
  if (conn.statements.size > MAX_STATEMENTS) conn.statements.delete(conn.statements.keys().next().value);
  return stmt;
}

// better-sqlite3 is built with SQLITE_DQS=0, but Spider's SQL (and Python's sqlite3, which scores it) treats
// "text" as a string when no column of that name exists. SQLite names the failing token in its error, so those
// tokens are rewritten as 'text' and the statement prepared again, exactly where legacy SQLite would fall back.
function prepare(db, m) {
  const literal = new Array(m.dquotes.length).fill(false);
  let sql = m.sql;
  for (;;) {
    try {
      return db.prepare(sql);
    } catch (e) {
      const hit = DQS_ERROR.exec(String(e && e.message));
      if (!hit) throw e;
      let changed = false;
      m.dquotes.forEach((q, i) => {
        if (!literal[i] && q[2] === hit[1]) literal[i] = changed = true;
      });
      if (!changed) throw e;
      let out = '';
      let at = 0;
      m.dquotes.forEach((q, i) => {
        if (!literal[i]) return;
        out += m.sql.slice(at, q[0]) + "'" + q[2].replace(/'/g, "''") + "'";
        at = q[1];
      });
      sql = out + m.sql.slice(at);
    }
  }
}

function codeOf(e) {
  switch (e && e.code) {
    case 'SQLITE_TOOBIG': case 'SQLITE_NOMEM': case 'SQLITE_FULL': return 'ERR_SQL_LIMIT';
    case 'SQLITE_AUTH': case 'SQLITE_PERM': case 'SQLITE_READONLY': return 'ERR_SQL_REJECTED';
    case 'SQLITE_CANTOPEN': return 'ERR_DB_NOT_FOUND';
  }
  if (e instanceof RangeError) return 'ERR_SQL_LIMIT';
  // better-sqlite3's own TypeErrors: several statements, or a statement that returns no data.
  if (e instanceof TypeError) return 'ERR_SQL_REJECTED';
  return 'ERR_SQL_ERROR';
}

function run(m) {
  const fail = (code, message) => ({ type: 'result', id: m.id, ok: false, code, message });
  try {
    const conn = connect(m.dbPath);
    const stmt = statement(conn, m);
    if (!stmt.reader || !stmt.readonly) return fail('ERR_SQL_REJECTED', 'only read queries are allowed');
    const columns = stmt.columns().map((c) => c.name);
    const rows = [];
    let bytes = 0;
    // iterate() streams, so a huge join stops at maxRows without materializing more than that.
    for (const row of stmt.iterate()) {
      if (rows.length >= m.maxRows) return fail('ERR_SQL_LIMIT', 'the result has more than ' + m.maxRows + ' rows');
      for (let i = 0; i < row.length; i++) {
        const v = row[i];
        if (typeof v === 'bigint') {
          if (v >= MIN_SAFE && v <= MAX_SAFE) row[i] = Number(v);
          bytes += 8;
        } else if (typeof v === 'string') bytes += 2 * v.length;
        else if (v === null || typeof v === 'number') bytes += 8;
        else bytes += v.length;
      }
      if (bytes > m.maxBytes) return fail('ERR_SQL_LIMIT', 'the result is larger than ' + m.maxBytes + ' bytes');
      rows.push(row);
    }
    return { type: 'result', id: m.id, ok: true, columns, rows };
  } catch (e) {
    return fail(codeOf(e), String(e && e.message));
  }
}

process.on('message', (m) => {
  if (m.type === 'init') {
    Database = require(m.modulePath);
    process.send({ type: 'ready' });
  } else if (m.type === 'run') {
    process.send(run(m));
  }
});
// The parent closed the channel or died: nothing is left to serve.
process.on('disconnect', () => process.exit(0));
`;
