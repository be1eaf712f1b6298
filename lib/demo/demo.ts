/**
 * `sqlr1 demo`: the embedded default run. Synthesizes a tiny model (cached in a working folder), builds the
 * toy company database, samples K SQL candidates per question on the chosen device, executes them in the
 * sandbox and reports execution accuracy.
 */
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generate, loadModel, makeModel } from '../model/index.js';
import type { DeviceRequest } from '../native/binding.js';
import { SqlExecutor } from '../sql/executor.js';
import { execMatch } from '../sql/exec-match.js';
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
  validSqlRate: number;
  seconds: number;
}

function lastSqlBlock(text: string): string | null {
  const blocks = [...text.matchAll(/```sql\s*([\s\S]*?)```/gi)];
  return blocks.length ? blocks.at(-1)![1]!.trim() : null;
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
    const prompts = TOY_EXAMPLES.map((ex) => model.encodeChat([
      { role: 'system', content: 'You write one SQLite query for the question, in a ```sql block.' },
      { role: 'user', content: `Database: company (department, employee, project, assignment).\nQuestion: ${ex.question}` },
    ]));
    const { completions } = await generate(model, {
      prompts, samplesPerPrompt: K, maxNewTokens: 48, temperature: 0.7, seed: options.seed ?? 0, stop: ['```\n'],
    });
    let correct = 0, valid = 0;
    for (const c of completions) {
      const sql = lastSqlBlock(c.text) ?? c.text;
      const m = await execMatch(executor, dbPath, sql, TOY_EXAMPLES[c.promptIndex]!.query);
      if (m.correct) correct++;
      if (m.pred.ok) valid++;
    }
    const report: DemoReport = {
      device: model.device, questions: TOY_EXAMPLES.length, samples: K,
      executionAccuracy: correct / completions.length, validSqlRate: valid / completions.length,
      seconds: (performance.now() - t0) / 1000,
    };
    log(`sampled ${completions.length} completions; execution accuracy ${report.executionAccuracy.toFixed(3)}, ` +
      `valid SQL ${report.validSqlRate.toFixed(3)} (${report.seconds.toFixed(1)} s)`);
    return report;
  } finally {
    await executor.close();
    model.dispose();
  }
}
