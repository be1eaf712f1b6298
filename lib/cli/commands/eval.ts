import type { Command } from 'commander';
import { SingleBar } from 'cli-progress';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Sqlr1Error } from '../../errors.js';
import { createToyDatabase, TOY_EXAMPLES } from '../../demo/toy-db.js';
import { DEMO_CONFIG, demoPrompts } from '../../demo/demo.js';
import { evaluateModel, formatEvaluation, formatGold, formatPredictions, type EvalItem } from '../../eval/evaluate.js';
import { loadLora, loadModel } from '../../model/index.js';
import { EXEC_METRICS, type ExecMetric } from '../../sql/compare.js';
import { SqlExecutor } from '../../sql/executor.js';
import { SpiderDataset } from '../../spider/dataset.js';
import { classifyHardness } from '../../spider/hardness.js';
import { PromptRenderer } from '../../spider/prompt.js';
import { parseChoice, parseFloatArg, parseIntArg, printJson } from '../util.js';

interface EvalCliOptions {
  model: string;
  lora?: string;
  spider?: string;
  toy?: boolean;
  split: 'train' | 'dev';
  maxSamples?: number;
  samples: number;
  vote?: boolean;
  temperature?: number;
  maxNewTokens?: number;
  metric: ExecMetric;
  out?: string;
  json?: string;
  batchSize?: number;
  seed: number;
  sampleRows: number;
  device: 'auto' | 'cpu' | 'cuda';
  timeoutMs: number;
  workers?: number;
  print?: boolean;
}

/** Writes a file whole, then renames it into place: a reader never sees half a file. */
async function writeAtomic(path: string, text: string): Promise<void> {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}

/** `X.sql` -> `X.<tag>.sql` (a companion file next to the predictions). */
const companion = (path: string, tag: string): string => (/\.sql$/i.test(path) ? path.replace(/\.sql$/i, `.${tag}.sql`) : `${path}.${tag}.sql`);

/**
 * Progress on stderr: a bar with questions/s and ETA on a terminal; otherwise a plain line at every tenth
 * of the work (logs and CI stay readable).
 */
function progressReporter(questions: number, passes: number): { update(done: number): void; stop(): void } {
  const total = questions * passes;
  if (process.stderr.isTTY) {
    const bar = new SingleBar({
      format: `eval [{bar}] {percentage}% | {questions}/${questions} questions | {rate} q/s | ETA {eta_formatted}`,
      stream: process.stderr, hideCursor: true, etaBuffer: 64,
    });
    const t0 = performance.now();
    bar.start(total, 0, { rate: '0.00', questions: 0 });
    let running = true;
    return {
      update: (done) => bar.update(done, { rate: (done / passes / ((performance.now() - t0) / 1000)).toFixed(2), questions: Math.floor(done / passes) }),
      stop: () => {
        if (running) bar.stop();
        running = false;
      },
    };
  }
  const t0 = performance.now();
  let next = 1;
  return {
    update(done) {
      if (done * 10 < next * total && done !== total) return;
      while (next * total <= done * 10) next++;
      const s = (performance.now() - t0) / 1000;
      const rate = done / s;
      const eta = rate > 0 ? (total - done) / rate : 0;
      const pct = Math.floor((100 * done) / total);
      process.stderr.write(`eval ${pct}%, ${(rate / passes).toFixed(2)} questions/s, ${s.toFixed(1)} s elapsed, ETA ${eta.toFixed(0)} s\n`);
    },
    stop: () => undefined,
  };
}

/** Adds `sqlr1 eval`: a model's execution accuracy on Spider (or the toy task), greedy and by majority vote. */
export function register(program: Command): void {
  program
    .command('eval')
    .description('run a model over a text-to-SQL set and score its answers by execution, per Spider hardness (greedy, and majority vote with --samples K --vote)')
    .requiredOption('--model <file>', 'GGUF model')
    .option('--lora <file>', 'LoRA adapter GGUF')
    .option('--spider <dir>', 'Spider directory (dev.json, tables.json, database/)')
    .option('--toy', "the project's toy company database and questions instead of Spider, with the demo's prompts (compact schema, short system message) and answer length: the accuracy `sqlr1 demo` reports")
    .option('--split <name>', 'train | dev', parseChoice('--split', ['train', 'dev'] as const), 'dev')
    .option('--max-samples <n>', 'only the first N questions', parseIntArg('--max-samples', 1))
    .option('--samples <k>', 'completions sampled per question for the vote', parseIntArg('--samples', 1), 1)
    .option('--vote', 'score the majority vote over the K samples next to greedy')
    .option('--temperature <t>', 'sampling temperature (default: 0 = greedy with one sample; 0.7 for the K voting samples)', parseFloatArg('--temperature', 0))
    .option('--max-new-tokens <n>', `most new tokens per completion (default 256; ${DEMO_CONFIG.maxCompletionLength} with --toy, as the demo)`, parseIntArg('--max-new-tokens', 1))
    .option('--metric <name>', "'spider' (multiset rows, column permutations, ORDER BY respected) or 'bird' (set(pred) == set(gold))", parseChoice('--metric', EXEC_METRICS), 'spider')
    .option('--out <file>', 'predictions file, one SQL per line (an answer without SQL is written as SELECT, which fails); with --vote also <file>.vote.sql; the matching gold file is <file>.gold.sql')
    .option('--json <file>', 'write the full report (one entry per question: question, db, gold, prediction, candidates, verdict, hardness, timing)')
    .option('--print', 'print the report summary as one JSON line on stdout instead of the table')
    .option('--batch-size <n>', 'most sequences decoded together (default: 1024 on CUDA, 64 on the CPU)', parseIntArg('--batch-size', 1))
    .option('--seed <n>', 'sampling seed', parseIntArg('--seed'), 0)
    .option('--sample-rows <n>', 'example rows per table in the prompt schema', parseIntArg('--sample-rows'), 2)
    .option('--device <device>', 'auto | cpu | cuda', parseChoice('--device', ['auto', 'cpu', 'cuda'] as const), 'auto')
    .option('--timeout-ms <n>', 'time limit per query in milliseconds', parseIntArg('--timeout-ms', 1), 5000)
    .option('--workers <n>', 'SQL worker processes (default: min(8, CPUs))', parseIntArg('--workers', 1))
    .action(async (o: EvalCliOptions) => {
      if ((o.spider === undefined) === (o.toy === undefined)) {
        throw new Sqlr1Error('ERR_INVALID_ARG', `sqlr1 eval: expected exactly one of --spider DIR or --toy, received ${o.spider ? 'both' : 'neither'}`);
      }
      if (o.vote && o.samples < 2) throw new Sqlr1Error('ERR_INVALID_ARG', `sqlr1 eval: --vote needs --samples K with K >= 2, received ${o.samples}`);
      let toyDir: string | undefined;
      let examples: EvalItem[];
      if (o.toy) {
        toyDir = mkdtempSync(join(tmpdir(), 'sqlr1-eval-toy-'));
        const dbPath = createToyDatabase(join(toyDir, 'company.sqlite'));
        examples = TOY_EXAMPLES.map((ex) => ({ question: ex.question, dbPath, goldSql: ex.query, dbId: 'company' }));
        if (o.maxSamples !== undefined) examples = examples.slice(0, o.maxSamples);
      } else {
        const ds = await SpiderDataset.load({ root: o.spider!, split: o.split, ...(o.maxSamples !== undefined ? { maxSamples: o.maxSamples } : {}) });
        examples = ds.examples.map((ex) => {
          // dev.json's parsed SQL gives the official hardness; otherwise it is classified from the query text.
          const hardness = classifyHardness(ex.sql ?? ex.query);
          return { question: ex.question, dbPath: ex.dbPath, goldSql: ex.query, dbId: ex.dbId, ...(hardness ? { hardness } : {}) };
        });
      }
      const model = await loadModel(o.model, { device: o.device });
      const executor = new SqlExecutor({ timeoutMs: o.timeoutMs, workers: o.workers ?? Math.max(1, Math.min(8, availableParallelism())) });
      const progress = progressReporter(examples.length, o.samples > 1 ? 2 : 1);
      try {
        const lora = o.lora ? await loadLora(model, o.lora) : undefined;
        const report = await evaluateModel(model, {
          examples, samples: o.samples, vote: o.vote ?? false, maxNewTokens: o.maxNewTokens ?? (o.toy ? DEMO_CONFIG.maxCompletionLength : 256), metric: o.metric, executor,
          seed: o.seed, renderer: o.toy ? demoPrompts(model) : new PromptRenderer(model, { sampleRows: o.sampleRows }),
          onProgress: (done) => progress.update(done),
          ...(lora ? { lora } : {}), ...(o.temperature !== undefined ? { temperature: o.temperature } : {}),
          ...(o.batchSize !== undefined ? { batchSize: o.batchSize } : {}),
        });
        progress.stop();
        if (o.out) {
          await writeAtomic(o.out, formatPredictions(report));
          await writeAtomic(companion(o.out, 'gold'), formatGold(report));
          if (report.voteAccuracy) await writeAtomic(companion(o.out, 'vote'), formatPredictions(report, 'vote'));
        }
        if (o.json) await writeAtomic(o.json, `${JSON.stringify({ model: o.model, lora: o.lora ?? null, ...report }, null, 1)}\n`);
        if (o.print) {
          const { entries: _entries, ...summary } = report;
          printJson(summary);
        } else {
          process.stdout.write(formatEvaluation(report));
        }
      } finally {
        progress.stop();
        await executor.close();
        model.dispose();
        if (toyDir) rmSync(toyDir, { recursive: true, force: true });
      }
    });
}
