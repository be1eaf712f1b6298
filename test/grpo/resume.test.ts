/**
 * Checkpoints and resume on the CPU: a run aborted after N steps (the abort finishes the step and saves a
 * loadable checkpoint), resumed from that checkpoint and run to N + M steps, writes byte-identical adapter and
 * optimizer files to the same run done straight; the logs are truncated to the checkpoint and continue the same.
 * A save that fails midway leaves the previous checkpoint whole. Uses the tiny synthesized model (speed, not
 * learning, matters here) with a reference pass and two updates per batch, so every pass of a step is exercised.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { loadModel, loadLora } from '../../lib/model/index.js';
import { GrpoTrainer, type GrpoTrainerOptions } from '../../lib/grpo/trainer.js';
import { readTrainerState, writeAtomicDir } from '../../lib/grpo/checkpoint.js';
import { toyDataset } from '../../lib/demo/demo.js';
import { isSqlr1Error } from '../../lib/errors.js';
import { tempDir, tinyModel } from '../helpers/native.js';

const STEPS = 4;
const SPLIT = 2;

t.test('resume is exact; abort leaves a loadable checkpoint', async (t) => {
  const dir = tempDir(t);
  const model = await loadModel(await tinyModel(dir, 'f32'), { device: 'cpu', log: () => undefined });
  t.teardown(() => model.dispose());
  const data = toyDataset(dir);
  const base = (outputDir: string): GrpoTrainerOptions => ({
    model, trainDataset: data, outputDir, maxSteps: STEPS, promptsPerStep: 3, numGenerations: 3, maxCompletionLength: 8,
    temperature: 1, beta: 0.05, numIterations: 2, learningRate: 1e-2, lrSchedulerType: 'linear', warmupSteps: 1, saveSteps: SPLIT,
    lora: { rank: 4, alpha: 8 }, seed: 11, progress: false, report: false, log: () => undefined, microBatchTokens: 512, maxPromptLength: 1024,
  });

  const straightDir = join(dir, 'straight');
  const a = await GrpoTrainer.create(base(straightDir));
  const ra = await a.train();
  await a.dispose();
  t.equal(ra.step, STEPS);
  t.notOk(ra.aborted);
  t.ok(existsSync(join(straightDir, 'final', 'adapter.gguf')), 'final/adapter.gguf');
  t.ok(existsSync(join(straightDir, 'config.yaml')), 'config.yaml');
  t.same(readdirSync(straightDir).filter((f) => f.startsWith('checkpoint-')).sort(), ['checkpoint-2', 'checkpoint-4']);
  t.notOk(readdirSync(straightDir).some((f) => f.startsWith('.')), 'no temporary folders left');

  // Aborted after SPLIT steps (the signal fires during step SPLIT's logging: the step is finished, then saved).
  const resumedDir = join(dir, 'resumed');
  const controller = new AbortController();
  const b = await GrpoTrainer.create({ ...base(resumedDir), saveSteps: 1000, callbacks: { onLog: (m) => { if (m['step'] === SPLIT) controller.abort(); } } });
  const rb = await b.train({ signal: controller.signal });
  await b.dispose();
  t.ok(rb.aborted, 'the run reports the abort');
  t.equal(rb.step, SPLIT, 'the step in progress was finished');
  const ck = join(resumedDir, `checkpoint-${SPLIT}`);
  const state = readTrainerState(ck);
  t.equal(state.step, SPLIT);
  t.equal(state.dataCursor, SPLIT * 3);
  const lora = await loadLora(model, join(ck, 'adapter.gguf'));
  t.ok(lora.tensorNames().length > 0, 'the aborted run\'s adapter loads');
  lora.dispose();
  for (const f of ['adapter.gguf', 'optimizer.gguf']) {
    t.ok(readFileSync(join(ck, f)).equals(readFileSync(join(straightDir, `checkpoint-${SPLIT}`, f))), `checkpoint-${SPLIT}/${f} equals the straight run's`);
  }
  // A line the resumed run must drop (logged "after" the checkpoint).
  writeFileSync(join(resumedDir, 'metrics.jsonl'), readFileSync(join(resumedDir, 'metrics.jsonl'), 'utf8') + '{"step":99}\n');

  const c = await GrpoTrainer.create({ ...base(resumedDir), resumeFrom: ck });
  t.equal(c.step, SPLIT, 'the resumed trainer starts at the checkpoint\'s step');
  const rc = await c.train();
  await c.dispose();
  t.equal(rc.step, STEPS);
  for (const f of ['adapter.gguf', 'optimizer.gguf']) {
    const x = readFileSync(join(straightDir, `checkpoint-${STEPS}`, f));
    const y = readFileSync(join(resumedDir, `checkpoint-${STEPS}`, f));
    t.ok(x.equals(y), `checkpoint-${STEPS}/${f}: ${SPLIT} + resume + ${STEPS - SPLIT} steps is byte-identical to ${STEPS} straight (${x.length} bytes)`);
  }
  const strip = (path: string) => readFileSync(path, 'utf8').trim().split('\n').map((l) => {
    const m = JSON.parse(l) as Record<string, number>;
    // Timings differ between runs; everything computed from the data must not.
    return Object.fromEntries(Object.entries(m).filter(([k]) => !k.startsWith('time/') && k !== 'step_time' && k !== 'tokens_per_second'));
  });
  const la = strip(join(straightDir, 'metrics.jsonl'));
  const lc = strip(join(resumedDir, 'metrics.jsonl'));
  t.equal(lc.length, STEPS, 'one metrics line per step, the stale line dropped');
  t.same(lc, la, 'the resumed run logs the same values as the straight run');
  t.ok(la.every((m) => typeof m['reward'] === 'number' && typeof m['kl'] === 'number' && typeof m['grad_norm'] === 'number'), 'reward, kl, grad_norm logged');
  t.same(readFileSync(join(resumedDir, 'completions.jsonl'), 'utf8'), readFileSync(join(straightDir, 'completions.jsonl'), 'utf8'), 'completions.jsonl identical');
});

t.test('a save that fails midway leaves the previous checkpoint whole', async (t) => {
  const dir = tempDir(t);
  const ck = join(dir, 'checkpoint-1');
  await writeAtomicDir(ck, async (tmp) => writeFileSync(join(tmp, 'a.txt'), 'first'));
  await t.rejects(writeAtomicDir(ck, async (tmp) => {
    writeFileSync(join(tmp, 'a.txt'), 'half');
    throw new Error('killed');
  }), /killed/);
  t.equal(readFileSync(join(ck, 'a.txt'), 'utf8'), 'first');
  t.same(readdirSync(dir), ['checkpoint-1'], 'the temporary folder is gone');
  let code: string | undefined;
  try {
    readTrainerState(ck);
  } catch (e) {
    code = isSqlr1Error(e) ? e.code : String(e);
  }
  t.equal(code, 'ERR_STATE_INVALID', 'a folder without trainer_state.json is not taken for a checkpoint');
});

t.test('a process killed (SIGKILL) while saving leaves the previous checkpoint whole', async (t) => {
  const dir = tempDir(t);
  const ck = join(dir, 'checkpoint-1');
  await writeAtomicDir(ck, async (tmp) => writeFileSync(join(tmp, 'adapter.gguf'), 'first'));
  const mod = pathToFileURL(join(import.meta.dirname, '..', '..', 'lib', 'grpo', 'checkpoint.ts')).href;
  // The child starts saving over checkpoint-1, writes one file, signals, and waits to be killed mid-save.
  const code = `const { writeAtomicDir } = await import(${JSON.stringify(mod)});
    await writeAtomicDir(${JSON.stringify(ck)}, async (tmp) => {
      (await import('node:fs')).writeFileSync(tmp + '/adapter.gguf', 'half');
      process.stdout.write('saving\\n');
      await new Promise(() => setInterval(() => undefined, 1000));
    });`;
  const child = spawn(process.execPath, [...process.execArgv.filter((a) => a.includes('@tapjs/typescript')), '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => { if (d.toString().includes('saving')) resolve(); });
    child.on('exit', (c) => reject(new Error(`the child exited (${c}) before saving`)));
  });
  child.kill('SIGKILL');
  await new Promise((r) => child.on('exit', r));
  t.equal(readFileSync(join(ck, 'adapter.gguf'), 'utf8'), 'first', 'checkpoint-1 still holds the first save');
  t.ok(readdirSync(dir).some((f) => f.startsWith('.checkpoint-1.tmp-')), 'the half-written save is a hidden temporary folder');
});
