/**
 * Replays the committed fuzz corpora (test/fuzz/corpus/<target>/, from scripts/fuzz.sh) and every crash reproducer
 * that was fixed (test/fuzz/regressions/<target>/) through the public loaders: loadModel (and the addon's loader
 * without the TypeScript reader in front), loadLora, ParamStore.loadState and readGgufMetadata. Each file must
 * load or fail with a typed Sqlr1Error code; a crash, an abort or an untyped exception fails the test. The loads
 * run in child processes (replay.ts), so an abort fails one file instead of killing the runner. No clang needed.
 */
import t from 'tap';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../../lib/native/binding.js';
import { tempDir, tinyModel } from '../helpers/native.js';
import { replay, typedOutcome, type Target } from './replay.js';
import { ADAPTER_MODEL_TYPE } from './targets.js';

const TARGETS: Target[] = ['model', 'adapter', 'state', 'reader'];

function files(kind: 'corpus' | 'regressions', target: Target): string[] {
  const dir = join(packageRoot, 'test', 'fuzz', kind, target);
  return existsSync(dir) ? readdirSync(dir).sort().map((f) => join(dir, f)) : [];
}

for (const target of TARGETS) {
  t.test(`fuzz corpus of ${target}: every input loads or fails with a typed error`, async (t) => {
    const corpus = files('corpus', target);
    const regressions = files('regressions', target);
    t.ok(corpus.length > 0, `the ${target} corpus has inputs (${corpus.length}, plus ${regressions.length} regressions)`);
    // The reader sees every file of every target: all of them are GGUF-shaped.
    const extra = target === 'reader' ? TARGETS.filter((x) => x !== 'reader').flatMap((x) => [...files('corpus', x), ...files('regressions', x)]) : [];
    const all = [...corpus, ...regressions, ...extra];
    const dir = tempDir(t);
    const model = target === 'adapter' ? await tinyModel(dir, ADAPTER_MODEL_TYPE) : '';
    const results = replay(target, all, dir, model);

    const crashes = results.filter((r) => r.crash);
    const untyped = results.filter((r) => !r.crash && (r.outcomes.length === 0 || !r.outcomes.every(typedOutcome)));
    const loaded = results.filter((r) => r.outcomes.length > 0 && r.outcomes.every((o) => o === 'ok'));
    for (const r of crashes) t.fail(`${r.file}: the loader crashed (${r.crash})`);
    for (const r of untyped) t.fail(`${r.file}: untyped outcome ${JSON.stringify(r.outcomes)}`);
    t.equal(results.length, all.length, `every input was replayed (${results.length} of ${all.length})`);
    t.equal(crashes.length, 0, 'no crash or abort');
    t.equal(untyped.length, 0, 'every failure is a typed Sqlr1Error');
    // The corpus holds the valid seeds too: the success path is replayed, not only the failures.
    t.ok(loaded.length > 0, `${loaded.length} inputs load successfully`);
    const codes = new Map<string, number>();
    for (const r of results) for (const o of r.outcomes) codes.set(o, (codes.get(o) ?? 0) + 1);
    t.comment(`${target}: ${[...codes].map(([c, n]) => `${c} ${n}`).join(', ')}`);
  });
}
