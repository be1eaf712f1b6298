/**
 * `sqlr1 demo`: the embedded default run. Synthesizes a tiny model (cached in a working folder), builds the
 * toy company database, renders each question with its schema through the chat template, samples K SQL
 * candidates per question on the chosen device, executes them in the sandbox, scores them with the default
 * reward and reports execution accuracy and the reward metrics (GRPO's sampling and scoring half).
 */
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generate, loadModel, makeModel } from '../model/index.js';
import type { DeviceRequest } from '../native/binding.js';
import { SqlExecutor } from '../sql/executor.js';
import { createReward } from '../rewards/index.js';
import { serializeSchema } from '../spider/schema.js';
import { buildPrompt } from '../spider/prompt.js';
import { createToyDatabase, TOY_EXAMPLES } from './toy-db.js';

export interface DemoOptions {
  device?: DeviceRequest;
  /** Working folder for the model and database (default: `sqlr1-demo` under the OS temp folder). */
  dir?: string;
  /** Completions per question (default 4). */
  samples?: number;
  seed?: number;
  log?: (msg: string) => void;
}

export interface DemoReport {
  device: string;
  questions: number;
  samples: number;
  executionAccuracy: number;
  /** The reward metrics of all samples (reward, reward_std, rewards/<component>/mean, ...). */
  metrics: Record<string, number>;
  seconds: number;
}

export async function runDemo(options: DemoOptions = {}): Promise<DemoReport> {
  const t0 = performance.now();
  const log = options.log ?? (() => undefined);
  const dir = options.dir ?? join(tmpdir(), 'sqlr1-demo');
  const K = options.samples ?? 4;
  const modelPath = join(dir, 'tiny-f32.gguf');
  if (!existsSync(modelPath)) {
    log(`synthesizing a tiny model at ${modelPath}`);
    await makeModel({ shape: 'tiny', type: 'f32', out: modelPath, seed: 1 });
  }
  const dbPath = createToyDatabase(join(dir, 'company.sqlite'));
  const model = await loadModel(modelPath, { device: options.device ?? 'auto' });
  const executor = new SqlExecutor({ timeoutMs: 2000 });
  try {
    log(`model: ${model.info.arch}, ${model.info.nLayer} layers, hidden ${model.info.nEmbd}, on ${model.device}`);
    const schema = serializeSchema(dbPath, { sampleRows: 2 });
    const prompts = TOY_EXAMPLES.map((ex) => model.encodeChat(buildPrompt({ schema, question: ex.question })));
    const { completions } = await generate(model, {
      prompts, samplesPerPrompt: K, maxNewTokens: 48, temperature: 0.7, seed: options.seed ?? 0, stop: ['```\n'],
    });
    const reward = createReward({ executor });
    const batch = await reward.scoreBatch(completions.map((c) => ({
      completion: c.text, goldSql: TOY_EXAMPLES[c.promptIndex]!.query, dbPath,
    })));
    const report: DemoReport = {
      device: model.device, questions: TOY_EXAMPLES.length, samples: K,
      executionAccuracy: batch.metrics['frac_correct'] ?? 0, metrics: batch.metrics,
      seconds: (performance.now() - t0) / 1000,
    };
    log(`sampled ${completions.length} completions (${K} per question, ${TOY_EXAMPLES.length} questions)`);
    log(`execution accuracy ${report.executionAccuracy.toFixed(3)}, mean reward ${(batch.metrics['reward'] ?? 0).toFixed(3)} ` +
      `(a random-weight model: expect 0 before training) in ${report.seconds.toFixed(1)} s`);
    return report;
  } finally {
    await executor.close();
    model.dispose();
  }
}
