/**
 * The `sqlr1` command as users run it (the compiled CLI in dist/, built by `npm ci` / `npm run build:ts`):
 * the JSON contracts of make-model, tokenize and generate, and typed errors with a non-zero exit.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../../lib/native/binding.js';
import { tempDir } from '../helpers/native.js';

const cli = join(packageRoot, 'bin', 'sqlr1.js');
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, SQLR1_QUIET: '1' } });

t.test('sqlr1 command line', { skip: existsSync(join(packageRoot, 'dist', 'cli', 'main.js')) ? false : 'dist/ not built (npm run build:ts)' }, async (t) => {
  const dir = tempDir(t);
  const model = join(dir, 'tiny.gguf');
  const made = run('make-model', '--shape', 'tiny', '--type', 'q8_0', '--out', model, '--json');
  t.equal(made.status, 0, made.stderr);
  const info = JSON.parse(made.stdout) as { bytes: number; type: string };
  t.equal(info.type, 'q8_0');
  t.ok(info.bytes > 1e6 && existsSync(model), 'the model file was written');

  const tok = run('tokenize', '--model', model, '--text', 'SELECT count(*) FROM singer', '--json');
  t.equal(tok.status, 0, tok.stderr);
  const ids = JSON.parse(tok.stdout) as number[];
  t.ok(Array.isArray(ids) && ids.length > 3 && ids.every(Number.isInteger), `token ids ${JSON.stringify(ids)}`);
  const lines = join(dir, 'lines.txt');
  writeFileSync(lines, 'SELECT 1\nhello world\n');
  const perLine = run('tokenize', '--model', model, '--file', lines, '--json');
  t.equal(perLine.stdout.trim().split('\n').length, 2, 'one JSON array per input line');

  const gen = run('generate', '--model', model, '--device', 'cpu', '--prompt', 'SELECT', '--raw', '--max-tokens', '6', '--temperature', '0', '--json');
  t.equal(gen.status, 0, gen.stderr);
  const out = JSON.parse(gen.stdout) as { prompt_tokens: number[]; tokens: number[]; text: string };
  t.same(out.prompt_tokens, JSON.parse(run('tokenize', '--model', model, '--text', 'SELECT', '--no-parse-special').stdout), '--raw prompt is the plain tokenization');
  t.equal(out.tokens.length, 6);
  t.equal(typeof out.text, 'string');
  const again = JSON.parse(run('generate', '--model', model, '--device', 'cpu', '--prompt', 'SELECT', '--raw', '--max-tokens', '6', '--temperature', '0', '--json').stdout) as { tokens: number[] };
  t.same(again.tokens, out.tokens, 'greedy generation repeats');

  const missing = run('generate', '--model', join(dir, 'nope.gguf'), '--prompt', 'x');
  t.equal(missing.status, 1);
  t.match(missing.stderr, /ERR_GGUF_NOT_FOUND/);
  const bad = run('make-model', '--shape', 'huge', '--out', join(dir, 'x.gguf'));
  t.not(bad.status, 0);
  t.match(bad.stderr, /--shape must be one of/);

  // train: a bad config key fails with ERR_CONFIG before the model or the data are touched.
  const cfg = join(dir, 'bad.yaml');
  writeFileSync(cfg, 'learning_rate: 5.0e-6\nnum_generation: 4\n');
  const train = run('train', '--config', cfg, '--model', join(dir, 'nope.gguf'), '--spider', join(dir, 'no-spider'));
  t.equal(train.status, 1, train.stderr);
  t.match(train.stderr, /ERR_CONFIG/);
  t.match(train.stderr, /num_generation/);

  // bench grpo: whole steps on the tiny model, each part timed.
  const bench = run('bench', 'grpo', '--model', model, '--device', 'cpu', '--prompts', '1', '--generations', '2', '--prompt-tokens', '16',
    '--completion-tokens', '4', '--steps', '1', '--json');
  t.equal(bench.status, 0, bench.stderr);
  const b = JSON.parse(bench.stdout) as { rows: { stepSeconds: number; parts: Record<string, number>; tokensPerSecond: number } };
  t.ok(b.rows.stepSeconds > 0 && b.rows.tokensPerSecond > 0, `step ${b.rows.stepSeconds} s`);
  t.same(Object.keys(b.rows.parts).sort(), ['optimizer', 'policy', 'reference', 'reward', 'rollout']);
  t.ok(b.rows.parts['reference']! > 0 && b.rows.parts['policy']! > 0, 'the reference and policy passes ran');
});
