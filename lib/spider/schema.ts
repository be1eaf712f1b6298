import Database from 'better-sqlite3';
import { existsSync } from 'node:fs';
import { Sqlr1Error } from '../errors.js';
import type { SpiderTables } from './dataset.js';

export interface SchemaOptions {
  /** Example rows shown per table, as a comment after its CREATE TABLE. Default 0. */
  sampleRows?: number;
  /** List foreign keys (from SQLite and, when given, tables.json) after the tables. Default true. */
  foreignKeys?: boolean;
  /** The database's tables.json entry, whose annotated foreign keys some CREATE statements lack. */
  tables?: SpiderTables;
  /** Longest text of one sample value before it is cut. Default 60. */
  maxValueLength?: number;
}

const cache = new Map<string, string>();
const CACHE_SIZE = 256;

const quoteName = (name: string): string => `"${name.replace(/"/g, '""')}"`;

function formatValue(v: unknown, max: number): string {
  if (v === null) return 'NULL';
  if (v instanceof Uint8Array) return `<${v.length} bytes>`;
  const s = String(v).replace(/\s+/g, ' ');
  return s.length > max ? `${s.slice(0, max)}...` : s;
}

/**
 * The schema of a SQLite database as prompt text: each table's CREATE TABLE statement from sqlite_master (in
 * file order, blank lines removed), optionally followed by N sample rows, then the foreign keys as
 * `-- child.column = parent.column` lines. This reads the database directly (the SQL here is the library's own,
 * not a model's) and caches the text per database and options.
 */
export function serializeSchema(dbPath: string, options: SchemaOptions = {}): string {
  const { sampleRows = 0, foreignKeys = true, tables, maxValueLength = 60 } = options;
  if (!Number.isInteger(sampleRows) || sampleRows < 0) {
    throw new Sqlr1Error('ERR_INVALID_ARG', `serializeSchema: sampleRows must be a non-negative integer, received ${String(sampleRows)}`);
  }
  const key = JSON.stringify([dbPath, sampleRows, foreignKeys, tables?.db_id ?? null, maxValueLength]);
  const hit = cache.get(key);
  if (hit !== undefined) return hit;
  if (!existsSync(dbPath)) throw new Sqlr1Error('ERR_DB_NOT_FOUND', `serializeSchema: database file not found: ${dbPath}`);
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const rows = db
      .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND sql IS NOT NULL ORDER BY rowid")
      .all() as Array<{ name: string; sql: string }>;
    const parts: string[] = [];
    const fks = new Set<string>();
    for (const { name, sql } of rows) {
      let text = `${sql.replace(/\r/g, '').replace(/\n\s*\n/g, '\n').trim()};`;
      if (sampleRows > 0) {
        const stmt = db.prepare(`SELECT * FROM ${quoteName(name)} LIMIT ${sampleRows}`);
        const columns = stmt.columns().map((c) => c.name);
        const values = stmt.raw(true).all() as unknown[][];
        if (values.length > 0) {
          const lines = values.map((r) => r.map((v) => formatValue(v, maxValueLength)).join(' | '));
          text += `\n/* ${values.length} example rows from ${name}:\n${columns.join(' | ')}\n${lines.join('\n')}\n*/`;
        }
      }
      parts.push(text);
      if (foreignKeys) {
        const list = db.pragma(`foreign_key_list(${quoteName(name)})`) as Array<{ table: string; from: string; to: string | null }>;
        for (const fk of list) fks.add(`${name}.${fk.from} = ${fk.table}.${fk.to ?? fk.from}`);
      }
    }
    if (foreignKeys && tables) {
      const col = (i: number): string | null => {
        const c = tables.column_names_original[i];
        const t = c ? tables.table_names_original[c[0]] : undefined;
        return c && t !== undefined ? `${t}.${c[1]}` : null;
      };
      for (const [from, to] of tables.foreign_keys) {
        const a = col(from);
        const b = col(to);
        if (a && b) fks.add(`${a} = ${b}`);
      }
    }
    if (fks.size > 0) parts.push(`-- Foreign keys:\n${[...dedupeCaseInsensitive(fks)].map((f) => `-- ${f}`).join('\n')}`);
    const out = parts.join('\n\n');
    cache.set(key, out);
    if (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value as string);
    return out;
  } finally {
    db.close();
  }
}

/** SQLite's and tables.json's spellings of the same key may differ in case only. */
function dedupeCaseInsensitive(items: Iterable<string>): Set<string> {
  const seen = new Set<string>();
  const out = new Set<string>();
  for (const s of items) {
    if (seen.has(s.toLowerCase())) continue;
    seen.add(s.toLowerCase());
    out.add(s);
  }
  return out;
}
