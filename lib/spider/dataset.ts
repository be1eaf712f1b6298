import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { Sqlr1Error } from '../errors.js';
import type { SpiderSql } from './hardness.js';

/** One question of Spider. */
export interface SpiderExample {
  question: string;
  /** Gold SQL. */
  query: string;
  dbId: string;
  /** `<root>/database/<dbId>/<dbId>.sqlite` */
  dbPath: string;
  /** Spider's parsed SQL when the file has it (dev.json does), for the official hardness path. */
  sql?: SpiderSql;
}

/** One database entry of tables.json. */
export interface SpiderTables {
  db_id: string;
  table_names_original: string[];
  column_names_original: Array<[table: number, column: string]>;
  column_types: string[];
  primary_keys: Array<number | number[]>;
  /** Pairs of column indices into column_names_original: [from, to]. */
  foreign_keys: Array<[number, number]>;
}

export interface SpiderLoadOptions {
  /** Spider directory: the JSON files and `database/`. */
  root: string;
  /** 'train' reads train_spider.json and train_others.json (when present); 'dev' reads dev.json. */
  split: 'train' | 'dev';
  /** Keep at most this many examples (after shuffling). Default all. */
  maxSamples?: number;
  /** Shuffle with this seed (deterministic across runs and platforms). Default: file order. */
  shuffleSeed?: number;
  /** Receives the one warning about examples skipped for a missing database. Default: process.emitWarning. */
  onWarning?: (message: string) => void;
}

const exampleSchema = z.object({
  question: z.string(),
  query: z.string(),
  db_id: z.string().min(1),
  sql: z.record(z.string(), z.unknown()).optional(),
});

const tablesSchema = z.array(
  z.object({
    db_id: z.string(),
    table_names_original: z.array(z.string()),
    column_names_original: z.array(z.tuple([z.number(), z.string()])),
    column_types: z.array(z.string()),
    primary_keys: z.array(z.union([z.number(), z.array(z.number())])),
    foreign_keys: z.array(z.tuple([z.number(), z.number()])),
  }),
);

/** Path of a Spider database file under `root`. */
export function spiderDbPath(root: string, dbId: string): string {
  return join(root, 'database', dbId, `${dbId}.sqlite`);
}

async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new Sqlr1Error('ERR_DATA', `cannot read Spider file ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Sqlr1Error('ERR_DATA', `Spider file ${path} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

function describeIssue(error: z.ZodError): string {
  const issue = error.issues[0];
  return issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : error.message;
}

async function readExamples(path: string, root: string): Promise<SpiderExample[]> {
  const data = await readJson(path);
  if (!Array.isArray(data)) throw new Sqlr1Error('ERR_DATA', `Spider file ${path}: expected an array of examples, received ${typeof data}`);
  return data.map((raw, i) => {
    const parsed = exampleSchema.safeParse(raw);
    if (!parsed.success) throw new Sqlr1Error('ERR_DATA', `Spider file ${path}, example ${i}: ${describeIssue(parsed.error)}`);
    const { question, query, db_id: dbId, sql } = parsed.data;
    const ex: SpiderExample = { question, query, dbId, dbPath: spiderDbPath(root, dbId) };
    if (sql) ex.sql = sql as unknown as SpiderSql;
    return ex;
  });
}

/** mulberry32: a small, fast PRNG whose sequence depends only on the seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Fisher-Yates shuffle of a copy of `items` with a seeded PRNG. */
export function shuffleWithSeed<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  const random = seededRandom(seed);
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}

/**
 * A Spider split with its schemas. Examples whose database file is missing are skipped, with one warning that
 * names the databases and the count; asking for such a database afterwards is ERR_DB_NOT_FOUND.
 */
export class SpiderDataset {
  readonly root: string;
  readonly split: 'train' | 'dev';
  readonly examples: readonly SpiderExample[];
  /** tables.json by database id (empty when the file is absent). */
  readonly tables: ReadonlyMap<string, SpiderTables>;
  /** Examples left out because their database file is missing. */
  readonly skipped: { readonly count: number; readonly dbIds: readonly string[] };

  private constructor(
    root: string,
    split: 'train' | 'dev',
    examples: SpiderExample[],
    tables: Map<string, SpiderTables>,
    skipped: { count: number; dbIds: string[] },
  ) {
    this.root = root;
    this.split = split;
    this.examples = examples;
    this.tables = tables;
    this.skipped = skipped;
  }

  static async load(options: SpiderLoadOptions): Promise<SpiderDataset> {
    const { root, split, maxSamples, shuffleSeed } = options;
    const invalid = (message: string): Sqlr1Error => new Sqlr1Error('ERR_INVALID_ARG', `SpiderDataset.load: ${message}`);
    if (typeof root !== 'string' || root === '') throw invalid('expected root, the Spider directory');
    if (split !== 'train' && split !== 'dev') throw invalid(`split must be 'train' or 'dev', received ${String(split)}`);
    if (maxSamples !== undefined && (!Number.isInteger(maxSamples) || maxSamples < 0)) {
      throw invalid(`maxSamples must be a non-negative integer, received ${String(maxSamples)}`);
    }
    if (shuffleSeed !== undefined && !Number.isInteger(shuffleSeed)) {
      throw invalid(`shuffleSeed must be an integer, received ${String(shuffleSeed)}`);
    }
    const files = split === 'dev' ? ['dev.json'] : ['train_spider.json', 'train_others.json'];
    let examples: SpiderExample[] = [];
    for (const [i, file] of files.entries()) {
      const path = join(root, file);
      // train_others.json is optional (it is often left out of copies); the first file of a split is not.
      if (i > 0 && !existsSync(path)) continue;
      examples.push(...(await readExamples(path, root)));
    }
    const tables = new Map<string, SpiderTables>();
    const tablesPath = join(root, 'tables.json');
    if (existsSync(tablesPath)) {
      const parsed = tablesSchema.safeParse(await readJson(tablesPath));
      if (!parsed.success) throw new Sqlr1Error('ERR_DATA', `Spider file ${tablesPath}: ${describeIssue(parsed.error)}`);
      for (const t of parsed.data) tables.set(t.db_id, t);
    }
    const present = new Map<string, boolean>();
    const missing = new Map<string, number>();
    examples = examples.filter((ex) => {
      let ok = present.get(ex.dbId);
      if (ok === undefined) present.set(ex.dbId, (ok = existsSync(ex.dbPath)));
      if (!ok) missing.set(ex.dbId, (missing.get(ex.dbId) ?? 0) + 1);
      return ok;
    });
    const skipped = { count: [...missing.values()].reduce((a, b) => a + b, 0), dbIds: [...missing.keys()].sort() };
    if (skipped.count > 0) {
      const warn = options.onWarning ?? ((m: string) => process.emitWarning(m, 'Sqlr1Warning'));
      const where = join(root, 'database');
      warn(`Spider ${split}: skipped ${skipped.count} examples whose database is missing under ${where}: ${skipped.dbIds.join(', ')}`);
    }
    if (shuffleSeed !== undefined) examples = shuffleWithSeed(examples, shuffleSeed);
    if (maxSamples !== undefined) examples = examples.slice(0, maxSamples);
    return new SpiderDataset(root, split, examples, tables, skipped);
  }

  get length(): number {
    return this.examples.length;
  }

  [Symbol.iterator](): Iterator<SpiderExample> {
    return this.examples[Symbol.iterator]();
  }

  /** The database file of `dbId`; ERR_DB_NOT_FOUND (naming it) when the file is missing. */
  dbPath(dbId: string): string {
    const path = spiderDbPath(this.root, dbId);
    if (!existsSync(path)) throw new Sqlr1Error('ERR_DB_NOT_FOUND', `Spider database "${dbId}" not found: expected the file ${path}`);
    return path;
  }
}
