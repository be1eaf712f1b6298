/**
 * `sqlr1 train --nproc-per-node 2` on the CPU (the compiled CLI in dist/): two ranks over loopback train a tiny
 * model on a toy Spider-shaped root; rank 0 alone writes the run directory and prints the result; a rank that
 * fails stops the run with its exit code. Also how a rank finds its GPU (CUDA_VISIBLE_DEVICES from LOCAL_RANK).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../../lib/native/binding.js';
import { pinLocalDevice, type DistEnv } from '../../lib/distributed/env.js';
import { makeFixtureRoot } from '../fixtures/company-db.js';
import { tempDir, tinyModel } from '../helpers/native.js';

const cli = join(packageRoot, 'bin', 'sqlr1.js');

t.test('each rank gets its own GPU', async (t) => {
  const at = (localRank: number): DistEnv => ({ rank: localRank, worldSize: 4, localRank, masterAddr: 'h', masterPort: 1 });
  const env: NodeJS.ProcessEnv = {};
  t.equal(pinLocalDevice(at(2), env), '2');
  t.equal(env.CUDA_VISIBLE_DEVICES, '2', 'LOCAL_RANK when the launcher set nothing');
  const listed: NodeJS.ProcessEnv = { CUDA_VISIBLE_DEVICES: '4,5,6,7' };
  t.equal(pinLocalDevice(at(1), listed), '5', 'the LOCAL_RANK-th entry of a list');
  t.equal(listed.CUDA_VISIBLE_DEVICES, '5');
  t.equal(pinLocalDevice(at(3), { CUDA_VISIBLE_DEVICES: '7' }), '7', 'a single device set by the launcher stays');
  t.throws(() => pinLocalDevice(at(3), { CUDA_VISIBLE_DEVICES: '0,1' }), { code: 'ERR_CONFIG', message: /LOCAL_RANK 3 has no entry/ });
});

t.test('sqlr1 train --nproc-per-node 2', { skip: existsSync(join(packageRoot, 'dist', 'cli', 'main.js')) ? false : 'dist/ not built (npm run build:ts)' }, async (t) => {
  const dir = tempDir(t);
  const fx = makeFixtureRoot();
  t.teardown(() => fx.remove());
  const questions = [
    ['How many employees are there?', 'SELECT count(*) FROM employees'],
    ['List the names of all departments.', 'SELECT name FROM departments'],
    ['What is the highest salary?', 'SELECT max(salary) FROM employees'],
    ['List the project titles.', 'SELECT title FROM projects'],
  ].map(([question, query]) => ({ db_id: 'company', question, query }));
  writeFileSync(join(fx.root, 'train_spider.json'), JSON.stringify(questions));
  writeFileSync(join(fx.root, 'dev.json'), JSON.stringify(questions.slice(0, 1)));
  const model = await tinyModel(dir, 'f32');
  const config = join(dir, 'dp.yaml');
  writeFileSync(config, ['device: cpu', 'prompts_per_step: 1', 'num_generations: 2', 'max_completion_length: 4', 'max_steps: 2',
    'learning_rate: 1.0e-3', 'save_steps: 1', 'eval_samples: 1', `output_dir: ${join(dir, 'run')}`, 'lora:', '  rank: 2', '  alpha: 4', ''].join('\n'));
  const run = (...extra: string[]) => spawnSync(process.execPath, [cli, 'train', '--config', config, '--model', model, '--spider', fx.root, '--json', ...extra],
    { encoding: 'utf8', env: { ...process.env, SQLR1_QUIET: '1', SQLR1_PROGRESS: '0', SQLR1_THREADS: '1' }, timeout: 600_000 });

  const r = run('--nproc-per-node', '2');
  t.equal(r.status, 0, r.stderr);
  const results = r.stdout.trim().split('\n').filter((l) => l.startsWith('{'));
  t.equal(results.length, 1, 'one result, printed by rank 0');
  const result = JSON.parse(results[0]!) as { step: number; aborted: boolean; adapterPath: string };
  t.equal(result.step, 2);
  t.notOk(result.aborted);
  t.ok(existsSync(result.adapterPath), 'the final adapter');
  const lines = readFileSync(join(dir, 'run', 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, number>);
  t.equal(lines.filter((l) => 'loss' in l).length, 2, 'one training line per step');
  t.ok(lines.every((l) => !('loss' in l) || typeof l['time/all_reduce'] === 'number'), 'each step reports its all-reduce time');
  t.ok(lines.some((l) => 'eval/execution_accuracy' in l), 'rank 0 evaluated');

  // A config error fails every rank before training; the launcher returns the first failure's code.
  const bad = run('--nproc-per-node', '2', '--set', 'sft_steps=2');
  t.equal(bad.status, 1, 'a rank\'s failure is the run\'s exit code');
  t.match(bad.stderr, /sft_steps \(2\) runs in one process/);
});
