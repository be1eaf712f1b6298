/**
 * A coverage-guided fuzzer for the TypeScript GGUF reader (`readGgufMetadata`), in the manner of libFuzzer:
 * mutate inputs from a corpus, run each through the reader, and keep the ones that reach new code. Coverage is
 * V8's precise block coverage (node:inspector `Profiler.takePreciseCoverage`, which also resets the counters)
 * over lib/gguf/reader.ts and lib/errors.ts; a feature is a covered block with its hit count in libFuzzer's
 * buckets (1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+), so loops that run longer count as new behaviour too.
 *
 * A finding is anything but success or a Sqlr1Error: another exception (a RangeError from a huge allocation, a
 * TypeError), or a read that does not settle within --timeout seconds. Each is written to the artifacts folder.
 *
 *   scripts/fuzz.sh reader <seconds>       compiles this file with tsc (under a TypeScript loader, V8's coverage
 *                                          reports would carry the whole compiler), fuzzes, then merges; by hand:
 *   node reader-fuzz.js --seconds 600 [--seed N] --artifacts DIR OUT [CORPUS...]
 *   node reader-fuzz.js --merge OUT CORPUS...
 *
 * The first folder receives new inputs; all are read as the starting corpus. --merge writes to OUT the smallest
 * set of inputs (smallest first) that covers every feature of all the inputs, like libFuzzer's -merge=1.
 */
import { Session } from 'node:inspector';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isSqlr1Error } from '../../lib/errors.js';
import { readGgufMetadata } from '../../lib/gguf/reader.js';

const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const seconds = Number(opt('--seconds') ?? 60);
const artifacts = opt('--artifacts');
const mergeOut = opt('--merge');
const timeoutS = Number(opt('--timeout') ?? 10);
const maxLen = Number(opt('--max-len') ?? 65536);
let seed = Number(opt('--seed') ?? Date.now() % 2 ** 31);
const dirs = args;
if (dirs.length === 0) throw new Error('usage: reader-fuzz.ts [--seconds N] [--artifacts DIR] [--merge OUT] DIR...');

// ---------------------------------------------------------------------------------------------------------------
// coverage

const session = new Session();
session.connect();
function post<T>(method: string, params?: object): T {
  let out: T | undefined;
  let err: Error | null = null;
  // In-process sessions answer synchronously.
  session.post(method, params ?? {}, (e, r) => { err = e; out = r as T; });
  if (err) throw err;
  return out!;
}
post('Profiler.enable');
post('Profiler.startPreciseCoverage', { callCount: true, detailed: true });

interface Coverage { result: { url: string; functions: { ranges: { startOffset: number; endOffset: number; count: number }[] }[] }[] }
const watched = (url: string) => /\/lib\/(gguf\/reader|errors)\.[jt]s$/.test(url);
const bucket = (c: number) => (c >= 128 ? 7 : c >= 32 ? 6 : c >= 16 ? 5 : c >= 8 ? 4 : c >= 4 ? 3 : c);

/** The features of the run since the last call (the counters reset with each take). */
function takeFeatures(): Set<string> {
  const cov = post<Coverage>('Profiler.takePreciseCoverage');
  const out = new Set<string>();
  for (const script of cov.result) {
    if (!watched(script.url)) continue;
    const file = script.url.includes('/gguf/reader.') ? 'r' : 'e';
    for (const fn of script.functions) {
      for (const r of fn.ranges) if (r.count > 0) out.add(`${file}${r.startOffset}:${r.endOffset}:${bucket(r.count)}`);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// running one input

const input = join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), `sqlr1-reader-fuzz-${process.pid}.gguf`);
process.on('exit', () => { try { unlinkSync(input); } catch { /* gone */ } });

type Outcome = { kind: 'ok' | 'typed' } | { kind: 'finding'; what: string };

async function runOne(data: Uint8Array): Promise<Outcome> {
  writeFileSync(input, data);
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<Outcome>((resolve) => {
    timer = setTimeout(() => resolve({ kind: 'finding', what: `timeout: no answer in ${timeoutS} s` }), timeoutS * 1000);
  });
  const read = readGgufMetadata(input).then(
    (): Outcome => ({ kind: 'ok' }),
    (e: unknown): Outcome => (isSqlr1Error(e) ? { kind: 'typed' } : { kind: 'finding', what: `${(e as Error)?.name}: ${(e as Error)?.message ?? String(e)}` }),
  );
  const r = await Promise.race([read, timeout]);
  clearTimeout(timer);
  return r;
}

// ---------------------------------------------------------------------------------------------------------------
// corpus

const sha1 = (d: Uint8Array) => createHash('sha1').update(d).digest('hex');
function readDir(dir: string): Uint8Array[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).map((f) => join(dir, f)).filter((p) => statSync(p).isFile()).map((p) => new Uint8Array(readFileSync(p)));
}

const features = new Set<string>();
const corpus: Uint8Array[] = [];
let execs = 0;
let findings = 0;
const seen = new Set<string>();

async function consider(data: Uint8Array, save: string | undefined): Promise<boolean> {
  takeFeatures();  // drop whatever ran in between
  const r = await runOne(data);
  execs++;
  const f = takeFeatures();
  if (r.kind === 'finding') {
    const h = sha1(data);
    if (!seen.has(h)) {
      seen.add(h);
      findings++;
      process.stdout.write(`==finding== ${r.what}\n`);
      if (artifacts) {
        mkdirSync(artifacts, { recursive: true });
        writeFileSync(join(artifacts, `crash-${h}`), data);
        process.stdout.write(`artifact: ${join(artifacts, `crash-${h}`)}\n`);
      }
    }
    return false;
  }
  let added = false;
  for (const x of f) if (!features.has(x)) { features.add(x); added = true; }
  if (added) {
    corpus.push(data);
    if (save) writeFileSync(join(save, sha1(data)), data);
  }
  return added;
}

// ---------------------------------------------------------------------------------------------------------------
// mutations

function rand(n: number): number {
  // mulberry32: a seeded stream, so a run can be repeated with --seed.
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return (((t ^ (t >>> 14)) >>> 0) / 4294967296) * n | 0;
}
const INTERESTING = [0n, 1n, 2n, 3n, 4n, 7n, 8n, 9n, 12n, 13n, 16n, 31n, 32n, 63n, 64n, 100n, 127n, 128n, 255n, 256n, 4096n, 65535n, 65536n,
  2n ** 31n - 1n, 2n ** 31n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 40n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 62n, 2n ** 63n - 1n, 2n ** 63n, 2n ** 64n - 1n];
const DICT = ['GGUF', 'general.alignment', 'general.architecture', 'tokenizer.ggml.tokens', 'qwen2.block_count', '.weight', 'blk.0.']
  .map((s) => Buffer.from(s));

function mutate(src: Uint8Array): Uint8Array {
  let d = Buffer.from(src);
  const n = 1 + rand(4);
  for (let k = 0; k < n; k++) {
    const len = d.length;
    switch (rand(10)) {
      case 0: if (len) d[rand(len)] ^= 1 << rand(8); break;
      case 1: if (len) d[rand(len)] = rand(256); break;
      case 2: case 3: {
        // An interesting integer as u8/u16/u32/u64, little-endian, at a random place (length and count fields).
        const w = [1, 2, 4, 8][rand(4)]!;
        if (len < w) break;
        const at = rand(len - w + 1);
        let v = INTERESTING[rand(INTERESTING.length)]!;
        if (rand(4) === 0) v = BigInt(len) + BigInt(rand(64)) - 32n;
        if (v < 0n) v = 0n;
        for (let i = 0; i < w; i++) { d[at + i] = Number(v & 255n); v >>= 8n; }
        break;
      }
      case 4: { // insert random bytes
        const at = rand(len + 1);
        const ins = Buffer.alloc(1 + rand(16));
        for (let i = 0; i < ins.length; i++) ins[i] = rand(256);
        d = Buffer.concat([d.subarray(0, at), ins, d.subarray(at)]);
        break;
      }
      case 5: { // delete a run
        if (!len) break;
        const at = rand(len);
        d = Buffer.concat([d.subarray(0, at), d.subarray(Math.min(len, at + 1 + rand(64)))]);
        break;
      }
      case 6: d = d.subarray(0, rand(len + 1)); break;
      case 7: { // copy a run elsewhere
        if (len < 2) break;
        const from = rand(len), to = rand(len), n2 = Math.min(1 + rand(32), len - from, len - to);
        d.copy(d, to, from, from + n2);
        break;
      }
      case 8: { // cross over with another corpus input
        const other = corpus[rand(corpus.length)]!;
        const at = rand(len + 1), from = rand(other.length + 1);
        d = Buffer.concat([d.subarray(0, at), Buffer.from(other.subarray(from))]);
        break;
      }
      case 9: { // a dictionary token
        const tok = DICT[rand(DICT.length)]!;
        const at = rand(len + 1);
        d = rand(2) ? Buffer.concat([d.subarray(0, at), tok, d.subarray(at)]) : Buffer.concat([d.subarray(0, at), tok, d.subarray(Math.min(len, at + tok.length))]);
        break;
      }
    }
  }
  return d.length > maxLen ? d.subarray(0, maxLen) : d;
}

// ---------------------------------------------------------------------------------------------------------------

const start = Date.now();
if (mergeOut) {
  mkdirSync(mergeOut, { recursive: true });
  const all = dirs.flatMap(readDir).sort((a, b) => a.length - b.length);
  for (const d of all) await consider(d, mergeOut);
  process.stdout.write(`merge: ${all.length} inputs -> ${corpus.length} kept, ${features.size} features, ${findings} findings\n`);
} else {
  const save = dirs[0]!;
  mkdirSync(save, { recursive: true });
  const initial = dirs.flatMap(readDir).sort((a, b) => a.length - b.length);
  for (const d of initial) await consider(d, undefined);
  if (corpus.length === 0) corpus.push(new Uint8Array(Buffer.from('GGUF')));
  process.stdout.write(`#${execs} INITED cov: ${features.size} corp: ${corpus.length} (seed ${seed})\n`);
  let lastReport = Date.now();
  while (Date.now() - start < seconds * 1000) {
    const parent = corpus[rand(corpus.length)]!;
    if (await consider(mutate(parent), save)) process.stdout.write(`#${execs} NEW cov: ${features.size} corp: ${corpus.length}\n`);
    if (Date.now() - lastReport > 30_000) {
      lastReport = Date.now();
      process.stdout.write(`#${execs} pulse cov: ${features.size} corp: ${corpus.length} exec/s: ${Math.round(execs / ((Date.now() - start) / 1000))} findings: ${findings}\n`);
    }
  }
  const secs = (Date.now() - start) / 1000;
  process.stdout.write(`#${execs} DONE cov: ${features.size} corp: ${corpus.length} findings: ${findings} in ${secs.toFixed(0)} s\n`);
  process.stdout.write(`stat::number_of_executed_units: ${execs}\nstat::average_exec_per_sec: ${Math.round(execs / secs)}\nstat::features: ${features.size}\nstat::findings: ${findings}\n`);
}
session.disconnect();
process.exit(findings > 0 ? 1 : 0);
