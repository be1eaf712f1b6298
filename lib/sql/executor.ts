import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import { Sqlr1Error, type ErrorCode } from '../errors.js';
import { checkReadOnlySql } from './guard.js';
import { WORKER_SOURCE, type WorkerInit, type WorkerReply, type WorkerRun } from './worker.js';

/** A value as returned by SQLite. Integers outside ±(2^53 - 1) stay exact as bigint. */
export type SqlValue = null | number | bigint | string | Uint8Array;
export type SqlRow = SqlValue[];

/** Error codes an execution can end with. */
export type SqlErrorCode = Extract<
  ErrorCode,
  'ERR_SQL_TIMEOUT' | 'ERR_SQL_REJECTED' | 'ERR_SQL_ERROR' | 'ERR_SQL_LIMIT' | 'ERR_DB_NOT_FOUND'
>;

export interface SqlSuccess {
  ok: true;
  columns: string[];
  rows: SqlRow[];
  /** Milliseconds from the moment a worker started the query until its answer (queueing excluded). */
  ms: number;
}

export interface SqlFailure {
  ok: false;
  error: { code: SqlErrorCode; message: string };
  ms: number;
}

export type SqlResult = SqlSuccess | SqlFailure;

export interface SqlExecutorOptions {
  /** Worker processes running queries in parallel. Default: min(2, available CPUs). */
  workers?: number;
  /**
   * Wall-clock limit per query in milliseconds, counted from the moment a worker starts it; past it the worker
   * is killed and replaced. Default 5000.
   */
  timeoutMs?: number;
  /** Most rows a result may have; more is ERR_SQL_LIMIT (Spider's largest gold result has ~13,000). Default 100000. */
  maxRows?: number;
  /**
   * Most bytes a result may hold, counting 8 per number or NULL, 2 per string code unit and a blob's length;
   * more is ERR_SQL_LIMIT. Default 16 MiB.
   */
  maxBytes?: number;
  /** Memory per worker in MiB: its V8 heap limit and (on Linux) the resident size at which it is killed. Default 512. */
  maxMemoryMb?: number;
  /** Longest SQL text accepted, in characters. Default 100000. */
  maxSqlLength?: number;
  /** Entries kept by the result cache used by `run(..., { cache: true })`. Default 4096. */
  cacheSize?: number;
}

export interface RunOptions {
  /** Reuse the result of an earlier identical (database, SQL) call; meant for gold queries. Default false. */
  cache?: boolean;
}

interface Job {
  message: WorkerRun;
  resolve: (r: SqlResult) => void;
  reject: (e: Error) => void;
  /** When the worker started it (when it reached the head of its worker's line). */
  started: number;
}

interface Slot {
  child: ChildProcess;
  ready: boolean;
  /** Jobs sent to this worker, in order; the first is running, the others wait in its message queue. */
  jobs: Job[];
  timer?: NodeJS.Timeout;
  watchdog?: NodeJS.Timeout;
  /** Why the parent killed this worker, if it did. */
  killedFor: 'timeout' | 'memory' | 'close' | null;
  stderr: string;
}

/**
 * Workers alive in this process. A worker stuck inside SQLite cannot see its IPC channel close, so if the
 * process exits with queries running (process.exit, an uncaught error), they are killed here instead of being
 * left to spin.
 */
const liveWorkers = new Set<ChildProcess>();
let exitHookInstalled = false;

function trackWorker(child: ChildProcess): void {
  liveWorkers.add(child);
  child.once('exit', () => liveWorkers.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const c of liveWorkers) c.kill('SIGKILL');
    });
  }
}

const BOOT_FAILURE_LIMIT = 3;
const WATCHDOG_INTERVAL_MS = 20;
/**
 * Jobs sent ahead to each worker. With two, a worker starts its next query as soon as it answers one, instead
 * of waiting for the parent's next message: on a busy machine that round trip costs more than a Spider query.
 */
const PIPELINE_DEPTH = 2;

function positiveInt(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value <= 0) {
    throw new Sqlr1Error('ERR_INVALID_ARG', `SqlExecutor option ${name}: expected a positive integer, received ${String(value)}`);
  }
  return value;
}

/** Resident memory of a process in bytes, or null where /proc is not available. */
function residentBytes(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/**
 * Runs model-written SQL against SQLite databases, treating it as hostile input.
 *
 * - Queries run in a pool of worker processes (see worker.ts for why not threads); each caches its connections.
 * - Databases open read-only (`readonly`, `fileMustExist`, `PRAGMA query_only=1`, `trusted_schema=0`).
 * - Only one SELECT/WITH statement per call: a token-level guard runs first, and the prepared statement must be
 *   a reader and read-only. `load_extension` is rejected by the guard and is disabled in SQLite anyway.
 * - A query past `timeoutMs` gets its worker killed (SIGKILL) and replaced; the caller receives ERR_SQL_TIMEOUT.
 *   Rows and bytes are capped while results stream; a worker past `maxMemoryMb` is killed (ERR_SQL_LIMIT).
 * - `run` never rejects because of the SQL: every outcome is a resolved {@link SqlResult}. It rejects only on
 *   misuse (bad arguments, a call after `close()`) or when workers cannot start at all.
 */
export class SqlExecutor {
  readonly workers: number;
  readonly timeoutMs: number;
  readonly maxRows: number;
  readonly maxBytes: number;
  readonly maxMemoryMb: number;
  readonly maxSqlLength: number;
  readonly cacheSize: number;

  #slots: Slot[] = [];
  #queue: Job[] = [];
  #nextId = 1;
  #bootFailures = 0;
  #closed = false;
  #closing: Promise<void> | null = null;
  #cache = new Map<string, Promise<SqlResult>>();
  #pending = new Map<string, Promise<SqlResult>>();
  #drained: Array<() => void> = [];
  readonly #modulePath: string;

  constructor(options: SqlExecutorOptions = {}) {
    this.workers = positiveInt('workers', options.workers, Math.min(2, availableParallelism()));
    this.timeoutMs = positiveInt('timeoutMs', options.timeoutMs, 5000);
    this.maxRows = positiveInt('maxRows', options.maxRows, 100_000);
    this.maxBytes = positiveInt('maxBytes', options.maxBytes, 16 * 1024 * 1024);
    this.maxMemoryMb = positiveInt('maxMemoryMb', options.maxMemoryMb, 512);
    this.maxSqlLength = positiveInt('maxSqlLength', options.maxSqlLength, 100_000);
    this.cacheSize = positiveInt('cacheSize', options.cacheSize, 4096);
    this.#modulePath = createRequire(import.meta.url).resolve('better-sqlite3');
  }

  /**
   * Runs one read-only statement against the SQLite file at `dbPath`. Identical calls may share one result
   * object (in flight, or from the cache), so treat results as read-only.
   */
  run(dbPath: string, sql: string, options: RunOptions = {}): Promise<SqlResult> {
    if (typeof dbPath !== 'string' || dbPath === '') {
      return Promise.reject(new Sqlr1Error('ERR_INVALID_ARG', `run: expected a database path, received ${typeof dbPath}`));
    }
    if (typeof sql !== 'string') {
      return Promise.reject(new Sqlr1Error('ERR_INVALID_ARG', `run: expected SQL text, received ${typeof sql}`));
    }
    if (this.#closed) return Promise.reject(new Sqlr1Error('ERR_DISPOSED', 'run: the SqlExecutor is closed'));
    const key = `${dbPath}\0${sql}`;
    if (!options.cache) return this.#coalesce(key, dbPath, sql);
    let hit = this.#cache.get(key);
    if (hit) {
      // Re-insert to mark it most recently used.
      this.#cache.delete(key);
    } else {
      hit = this.#coalesce(key, dbPath, sql);
      // A timeout says more about the machine's load than about the query: do not keep it.
      hit.then(
        (r) => { if (!r.ok && r.error.code === 'ERR_SQL_TIMEOUT') this.#cache.delete(key); },
        () => this.#cache.delete(key),
      );
    }
    this.#cache.set(key, hit);
    if (this.#cache.size > this.cacheSize) this.#cache.delete(this.#cache.keys().next().value as string);
    return hit;
  }

  /** Refuses new calls, lets every call already made finish, then stops the workers. */
  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  async #shutdown(): Promise<void> {
    this.#closed = true;
    if (!this.#isIdle()) await new Promise<void>((resolve) => this.#drained.push(resolve));
    await Promise.all(
      this.#slots.map(
        (slot) =>
          new Promise<void>((resolve) => {
            if (slot.child.exitCode !== null || slot.child.signalCode !== null) return resolve();
            slot.child.once('exit', () => resolve());
            // Unreferenced idle workers would let the process exit before this promise settles.
            slot.child.ref();
            slot.killedFor = 'close';
            if (slot.child.connected) slot.child.disconnect();
            else slot.child.kill('SIGKILL');
          }),
      ),
    );
    this.#slots = [];
    this.#cache.clear();
  }

  #isIdle(): boolean {
    return this.#queue.length === 0 && this.#slots.every((s) => s.jobs.length === 0);
  }

  /** Identical queries in flight at the same time share one execution (databases are read-only). */
  #coalesce(key: string, dbPath: string, sql: string): Promise<SqlResult> {
    let pending = this.#pending.get(key);
    if (!pending) {
      pending = this.#execute(dbPath, sql);
      this.#pending.set(key, pending);
      const done = (): void => { this.#pending.delete(key); };
      pending.then(done, done);
    }
    return pending;
  }

  #execute(dbPath: string, sql: string): Promise<SqlResult> {
    const t0 = performance.now();
    const guard = checkReadOnlySql(sql, this.maxSqlLength);
    if (!guard.ok) return Promise.resolve(failure('ERR_SQL_REJECTED', guard.message, performance.now() - t0));
    if (!existsSync(dbPath)) {
      return Promise.resolve(failure('ERR_DB_NOT_FOUND', `database file not found: ${dbPath}`, performance.now() - t0));
    }
    const dquotes: Array<[number, number, string]> = [];
    for (const t of guard.tokens) if (t.kind === 'dquote' && !t.unterminated) dquotes.push([t.start, t.end, t.value]);
    return new Promise<SqlResult>((resolve, reject) => {
      const message: WorkerRun = { type: 'run', id: this.#nextId++, dbPath, sql, dquotes, maxRows: this.maxRows, maxBytes: this.maxBytes };
      this.#queue.push({ message, resolve, reject, started: 0 });
      this.#pump();
    });
  }

  #pump(): void {
    if (this.#closed && this.#isIdle()) {
      for (const resolve of this.#drained.splice(0)) resolve();
      return;
    }
    while (this.#slots.length < this.workers) this.#slots.push(this.#spawn());
    // Fill each worker's line one job at a time, round robin, so a short queue spreads over all workers.
    for (let depth = 1; depth <= PIPELINE_DEPTH && this.#queue.length > 0; depth++) {
      for (const slot of this.#slots) {
        if (this.#queue.length === 0) break;
        if (slot.ready && !slot.killedFor && slot.jobs.length < depth) this.#send(slot, this.#queue.shift() as Job);
      }
    }
    this.#updateRefs();
  }

  #spawn(): Slot {
    const child = spawn(process.execPath, [`--max-old-space-size=${this.maxMemoryMb}`, '-e', WORKER_SOURCE], {
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      serialization: 'advanced',
      // The parent's NODE_OPTIONS may load a TypeScript loader or a debugger; the worker needs neither.
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    trackWorker(child);
    const slot: Slot = { child, ready: false, jobs: [], killedFor: null, stderr: '' };
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (s: string) => { slot.stderr = (slot.stderr + s).slice(-2000); });
    child.on('message', (m: WorkerReply) => this.#onMessage(slot, m));
    child.on('exit', (code, signal) => this.#onExit(slot, code, signal));
    // A failed spawn also emits 'exit'; this keeps the error from being thrown as unhandled.
    child.on('error', (e) => { slot.stderr += String(e.message); });
    const init: WorkerInit = { type: 'init', modulePath: this.#modulePath };
    child.send(init);
    return slot;
  }

  #send(slot: Slot, job: Job): void {
    slot.jobs.push(job);
    slot.child.send(job.message);
    if (slot.jobs.length === 1) this.#startHead(slot);
  }

  /** Starts the clocks of the job the worker is now running: its timeout and the memory watchdog. */
  #startHead(slot: Slot): void {
    const job = slot.jobs[0];
    if (!job) return;
    job.started = performance.now();
    slot.timer = setTimeout(() => this.#kill(slot, 'timeout'), this.timeoutMs);
    const pid = slot.child.pid;
    if (pid !== undefined && process.platform === 'linux' && !slot.watchdog) {
      const limit = this.maxMemoryMb * 1024 * 1024;
      slot.watchdog = setInterval(() => {
        const rss = residentBytes(pid);
        if (rss !== null && rss > limit) this.#kill(slot, 'memory');
      }, WATCHDOG_INTERVAL_MS);
    }
  }

  /** Answers the worker's running job and moves on to its next one. */
  #finishHead(slot: Slot, result: SqlResult): void {
    clearTimeout(slot.timer);
    const job = slot.jobs.shift();
    job?.resolve(result);
    if (slot.jobs.length > 0 && !slot.killedFor) this.#startHead(slot);
    else {
      clearInterval(slot.watchdog);
      slot.watchdog = undefined;
    }
    this.#pump();
  }

  #onMessage(slot: Slot, m: WorkerReply): void {
    if (m.type === 'ready') {
      slot.ready = true;
      this.#bootFailures = 0;
      this.#pump();
      return;
    }
    const job = slot.jobs[0];
    if (!job || job.message.id !== m.id) return;
    const ms = performance.now() - job.started;
    const result: SqlResult = m.ok
      ? { ok: true, columns: m.columns, rows: m.rows as SqlRow[], ms }
      : failure(m.code as SqlErrorCode, m.message, ms);
    this.#finishHead(slot, result);
  }

  /**
   * Kills a worker whose query ran too long or grew too large, answers that caller at once, puts the jobs that
   * waited behind it back at the front of the queue, and lets #pump start a replacement.
   */
  #kill(slot: Slot, why: 'timeout' | 'memory'): void {
    const job = slot.jobs[0];
    if (!job || slot.killedFor) return;
    slot.killedFor = why;
    slot.child.kill('SIGKILL');
    this.#retire(slot);
    const ms = performance.now() - job.started;
    this.#finishHead(
      slot,
      why === 'timeout'
        ? failure('ERR_SQL_TIMEOUT', `the query ran longer than ${this.timeoutMs} ms`, ms)
        : failure('ERR_SQL_LIMIT', `the query used more than ${this.maxMemoryMb} MiB of memory`, ms),
    );
  }

  /** Removes a dead or dying worker from the pool; the jobs waiting behind its running one go back to the queue. */
  #retire(slot: Slot): void {
    const i = this.#slots.indexOf(slot);
    if (i >= 0) this.#slots.splice(i, 1);
    this.#queue.unshift(...slot.jobs.splice(1));
  }

  #onExit(slot: Slot, code: number | null, signal: NodeJS.Signals | null): void {
    clearTimeout(slot.timer);
    clearInterval(slot.watchdog);
    if (slot.killedFor) return;
    this.#retire(slot);
    const job = slot.jobs[0];
    if (job) {
      // The worker died under a query: V8 heap exhaustion is a size limit, anything else an execution error.
      const oom = /heap out of memory|allocation failed/i.test(slot.stderr);
      const detail = `the SQL worker exited (${signal ?? `code ${code}`})${slot.stderr ? `: ${slot.stderr.trim().slice(-300)}` : ''}`;
      this.#finishHead(slot, failure(oom ? 'ERR_SQL_LIMIT' : 'ERR_SQL_ERROR', detail, performance.now() - job.started));
      return;
    }
    if (!slot.ready && !this.#closed && ++this.#bootFailures >= BOOT_FAILURE_LIMIT) {
      const why = `${signal ?? `code ${code}`}): ${slot.stderr.trim().slice(-500)}`;
      const error = new Sqlr1Error('ERR_INTERNAL', `SQL workers fail to start (${why}`);
      for (const queued of this.#queue.splice(0)) queued.reject(error);
      this.#bootFailures = 0;
    }
    if (this.#queue.length > 0 || this.#closed) this.#pump();
  }

  /** Idle workers must not keep the process alive; busy ones (or ones booting for queued work) must. */
  #updateRefs(): void {
    const queued = this.#queue.length > 0;
    for (const slot of this.#slots) {
      const channel = slot.child.channel;
      if (queued || slot.jobs.length > 0) {
        slot.child.ref();
        channel?.ref();
      } else {
        slot.child.unref();
        channel?.unref();
      }
    }
  }
}

function failure(code: SqlErrorCode, message: string, ms: number): SqlFailure {
  return { ok: false, error: { code, message }, ms };
}
