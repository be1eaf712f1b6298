/**
 * GRPO learns, in the right direction (CPU, fixed seeds). The demo's run on the toy task: its supervised warm-up
 * stops when greedy execution accuracy first reaches 0.25, which must leave it between 20% and 60%; from that
 * warmed-up adapter, the demo's GRPO steps raise the mean execution reward of sampled answers (the fraction that
 * return the gold result, 8 samples per question at the training temperature, one fixed seed) by a clear margin,
 * and the same steps with the advantages' sign flipped lower it. A sign error anywhere (advantages, loss,
 * gradient, optimizer) fails one of the two. The same run also checks that `sqlr1 eval --toy` on the demo's
 * warm-up and final adapters prints the accuracies the demo reports.
 *
 * CI has just run the README's demo (`npm run demo`, the same code) and names its folder in SQLR1_DEMO_DIR: that
 * run's adapters are checked here instead of training a second, identical run. Every figure the assertions use
 * is measured again from the adapters (accuracies through `sqlr1 eval --toy`, sampled rewards by sampling); only
 * the training itself is the demo's. Without SQLR1_DEMO_DIR the test runs the demo itself.
 */
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { register as registerEval } from '../../lib/cli/commands/eval.js';
import type { EvaluationReport } from '../../lib/eval/evaluate.js';
import { join } from 'node:path';
import { loadLora, loadModel, type Model } from '../../lib/model/index.js';
import { GrpoTrainer } from '../../lib/grpo/trainer.js';
import {
  DEMO_CONFIG, DEMO_REPORT_FILE, demoModelPath, demoPrompts, runDemo, sampledExecutionReward, toyDataset, type DemoReport,
} from '../../lib/demo/demo.js';
import { runCommand } from '../helpers/cli.js';
import { tempDir } from '../helpers/native.js';

/** `sqlr1 eval --toy --print` in process: the accuracy over all questions. */
async function evalToy(model: string, lora: string): Promise<number> {
  const out = await runCommand(registerEval, ['eval', '--toy', '--model', model, '--lora', lora, '--device', 'cpu', '--print', '--workers', '1']);
  return (JSON.parse(out) as EvaluationReport).accuracy.all.accuracy;
}

/** The demo's run: the one in SQLR1_DEMO_DIR, or a new one. */
async function demoRun(t: { teardown(fn: () => void): void; comment(...m: unknown[]): void }): Promise<{ dir: string; demo: DemoReport }> {
  const reuse = process.env.SQLR1_DEMO_DIR;
  if (!reuse) {
    const dir = tempDir(t);
    return { dir, demo: await runDemo({ dir, device: 'cpu', progress: false }) };
  }
  const file = join(reuse, 'run', DEMO_REPORT_FILE);
  if (!existsSync(file)) throw new Error(`SQLR1_DEMO_DIR=${reuse} has no run/${DEMO_REPORT_FILE}: run \`sqlr1 demo --dir ${reuse}\` first, or unset it`);
  const demo = JSON.parse(readFileSync(file, 'utf8')) as DemoReport;
  if (demo.device !== 'cpu') throw new Error(`the demo in ${reuse} ran on ${demo.device}; this test checks a CPU run`);
  t.comment(`checking the demo run in ${reuse} (SQLR1_DEMO_DIR) instead of training it again`);
  return { dir: reuse, demo };
}

t.test('GRPO raises the execution reward; with the sign flipped it lowers it', async (t) => {
  const { dir, demo } = await demoRun(t);
  const warm = demo.accuracy.afterWarmup;
  t.ok(warm >= 0.2 && warm <= 0.6, `the warm-up (${demo.warmupSteps} steps) leaves greedy accuracy in [0.2, 0.6]: ${warm.toFixed(3)}`);

  const modelPath = await demoModelPath(dir);
  t.equal(await evalToy(modelPath, demo.adapters.warmup), warm, 'sqlr1 eval --toy on the warm-up adapter gives the accuracy the demo reports');
  t.equal(await evalToy(modelPath, demo.adapters.final), demo.accuracy.afterGrpo, 'sqlr1 eval --toy on the final adapter gives the accuracy the demo reports');

  const model: Model = await loadModel(modelPath, { device: 'cpu', log: () => undefined });
  t.teardown(() => model.dispose());
  const work = tempDir(t);
  const data = toyDataset(work);
  const prompts = demoPrompts(model);
  const sampled = async (lora: Awaited<ReturnType<typeof loadLora>>) => {
    try {
      return await sampledExecutionReward(model, data, prompts, lora, DEMO_CONFIG);
    } finally {
      lora.dispose();
    }
  };
  const r0 = await sampled(await loadLora(model, demo.adapters.warmup));
  const grpo = await sampled(await loadLora(model, demo.adapters.final));
  const flippedRun = await GrpoTrainer.create({
    ...DEMO_CONFIG, model, trainDataset: data, evalDataset: data, prompts, progress: false, report: false, log: () => undefined,
    lora: { ...DEMO_CONFIG.lora, path: demo.adapters.warmup }, outputDir: join(work, 'flipped'), negateAdvantages: true,
  });
  for (let s = 0; s < DEMO_CONFIG.maxSteps; s++) await flippedRun.trainStep();
  const flipped = await sampledExecutionReward(model, data, prompts, flippedRun.lora, DEMO_CONFIG);
  await flippedRun.dispose();

  t.comment(`greedy accuracy: warm-up ${warm.toFixed(3)}, after GRPO ${demo.accuracy.afterGrpo.toFixed(3)}; mean sampled execution reward: ` +
    `warm-up ${r0.toFixed(3)}, after ${DEMO_CONFIG.maxSteps} GRPO steps ${grpo.toFixed(3)}, with the sign flipped ${flipped.toFixed(3)} ` +
    `(the demo measured ${demo.sampledReward.afterWarmup.toFixed(3)} and ${demo.sampledReward.afterGrpo.toFixed(3)})`);
  t.ok(grpo >= r0 + 0.1, `GRPO raises it by at least 0.1: ${r0.toFixed(3)} -> ${grpo.toFixed(3)}`);
  t.ok(flipped <= r0 - 0.05, `the flipped sign lowers it by at least 0.05: ${r0.toFixed(3)} -> ${flipped.toFixed(3)}`);
});
