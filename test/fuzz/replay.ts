/**
 * Runs replay-child.ts over a list of files and collects one outcome per file. When the child dies (an abort, a
 * signal, a non-zero exit), the file it was on is recorded as a crash and a new child goes on from the next one,
 * so one bad input cannot hide the others.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { packageRoot } from '../../lib/native/binding.js';

export type Target = 'model' | 'adapter' | 'state' | 'reader';

export interface ReplayOutcome {
  file: string;
  /** One entry per call the child made on the file: 'ok', an error code, or 'UNTYPED ...'. */
  outcomes: string[];
  /** Set when the child died on this file: its exit status or signal and the tail of its stderr. */
  crash?: string;
}

/** The TypeScript loader the child runs under (the one tap itself uses). */
function tsImport(): string {
  const fromArgv = process.execArgv.find((a) => a.startsWith('--import=') && a.includes('@tapjs/typescript'));
  if (fromArgv) return fromArgv;
  const req = createRequire(join(packageRoot, 'package.json'));
  return `--import=${pathToFileURL(join(req.resolve('@tapjs/typescript/package.json'), '..', 'dist', 'esm', 'import.mjs')).href}`;
}

export function replay(target: Target, files: readonly string[], dir: string, modelPath = '', timeoutMs = 300_000): ReplayOutcome[] {
  const results: ReplayOutcome[] = [];
  let start = 0;
  while (start < files.length) {
    const list = join(dir, `replay-${target}-${start}.txt`);
    writeFileSync(list, files.slice(start).join('\n') + '\n');
    const r = spawnSync(process.execPath, [tsImport(), join(packageRoot, 'test', 'fuzz', 'replay-child.ts'), target, list, modelPath], {
      cwd: packageRoot, encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20, env: { ...process.env, SQLR1_QUIET: '1' },
    });
    let current = -1;
    let ended = false;
    for (const line of r.stdout.split('\n')) {
      const [kind, idx, ...rest] = line.split(' ');
      if (kind === 'START') current = Number(idx);
      else if (kind === 'DONE') {
        const outcomes: string[] = [];
        for (let k = 0; k < rest.length; k++) {
          // An UNTYPED outcome runs to the end of the line (its message has spaces).
          if (rest[k] === 'UNTYPED') { outcomes.push(rest.slice(k).join(' ')); break; }
          outcomes.push(rest[k]!);
        }
        results.push({ file: files[start + Number(idx)]!, outcomes });
        current = -1;
      } else if (kind === 'END') ended = true;
    }
    if (ended && r.status === 0) break;
    const why = `exit ${String(r.status)} signal ${String(r.signal)}${r.error ? ` (${r.error.message})` : ''}: ${r.stderr.trim().slice(-600)}`;
    if (current < 0) {
      // Died outside any input (start-up, or after the last file): nothing to pin it to, so it fails as a whole.
      results.push({ file: `<${target} child>`, outcomes: [], crash: why });
      break;
    }
    results.push({ file: files[start + current]!, outcomes: [], crash: why });
    start += current + 1;
  }
  return results;
}

/** An outcome the replay accepts: the call succeeded or failed with a typed error code. */
export function typedOutcome(o: string): boolean {
  return o === 'ok' || /^ERR_[A-Z0-9_]+$/.test(o);
}
