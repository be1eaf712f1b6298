/**
 * `sqlr1 demo`: the embedded default run, end to end on the toy company database. Synthesizes a small model
 * (cached in a working folder), measures greedy execution accuracy (through evaluateModel, as `sqlr1 eval --toy`
 * does), runs a supervised warm-up on the gold answers until greedy accuracy reaches DEMO_WARMUP.targetAccuracy,
 * measures again, then trains with GRPO and measures a third time; after the warm-up and after GRPO it also
 * measures the mean sampled execution reward. The run directory (config.yaml, metrics.jsonl, completions.jsonl,
 * warmup/ and final/ adapters, checkpoints, report.html, and demo.json: the report) is left in the working folder.
 * The pass rule: greedy accuracy after GRPO above the accuracy after the warm-up (`improved`; the CLI exits 1
 * otherwise).
 */
import Database from 'better-sqlite3';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, makeModel, type LoraAdapter, type Model } from '../model/index.js';
import type { DeviceRequest } from '../native/binding.js';
import { GrpoTrainer, type GrpoTrainerOptions, type PromptSource } from '../grpo/trainer.js';
import { buildPrompt } from '../spider/prompt.js';
import type { Metrics } from '../grpo/metrics.js';
import { ADAPTER_FILE, writeAtomicDir } from '../grpo/checkpoint.js';
import { sampleRollouts } from '../grpo/rollout.js';
import { createReward } from '../rewards/index.js';
import { SqlExecutor } from '../sql/executor.js';
import { warmupUntil } from './warmup.js';
import { createToyDatabase, TOY_EXAMPLES } from './toy-db.js';

/** The demo model: `demo` shape (hidden 256, 4 layers, the real Qwen2 vocabulary), f32 weights. */
export const DEMO_MODEL = { shape: 'demo', type: 'f32', seed: 1 } as const;

/**
 * The demo's GRPO settings, measured on the 2-core CPU machine (see the README's demo section): the reward is the
 * execution component alone (1 correct, 0.1 executes but wrong, -0.5 fails), the quantity the demo reports; a low
 * sampling temperature (0.3) keeps the samples near what the warmed-up model already writes, so that pushing
 * down wrong samples does not spread probability over the 152k-token vocabulary; advantages are centred but not
 * divided by the group's standard deviation (a group with one wrong answer in eight would otherwise push it down
 * with a weight of 2.5); the learning rate suits LoRA on a small random model (a 3B model uses 5e-6).
 */
export const DEMO_CONFIG = {
  sftSteps: 0,
  maxSteps: 8,
  learningRate: 1e-4,
  lrSchedulerType: 'linear',
  warmupSteps: 0,
  weightDecay: 0,
  maxGradNorm: 1,
  promptsPerStep: 6,
  numGenerations: 8,
  maxCompletionLength: 48,
  temperature: 0.3,
  beta: 0,
  epsilon: 0.2,
  lossType: 'dapo',
  scaleRewards: 'none',
  rewardWeights: { format: 0, partial_match: 0 },
  loggingSteps: 1,
  evalSteps: 1000,
  saveSteps: 1000,
  evalSamples: 0,
  maxPromptLength: 256,
  microBatchTokens: 8192,
  lora: { rank: 16, alpha: 32 },
  seed: 3,
} satisfies Partial<GrpoTrainerOptions>;

/**
 * The demo's supervised warm-up (see warmup.ts): at most 40 full-batch steps at 3e-3 decaying linearly, stopped
 * at the first step whose greedy accuracy reaches 0.25, so that GRPO starts from a partly right model.
 */
export const DEMO_WARMUP = { maxSteps: 40, lr: 3e-3, targetAccuracy: 0.25, evalBelowLoss: 2 } as const;

/** The demo's report (DemoReport as JSON) in its run directory. */
export const DEMO_REPORT_FILE = 'demo.json';

/** Samples per question for the mean sampled execution reward (at the training temperature, fixed seed). */
export const DEMO_REWARD_SAMPLES = 8;
const DEMO_REWARD_SEED = 12345;

export interface DemoOptions {
  device?: DeviceRequest;
  /** Working folder for the model, database and run directory (default: `sqlr1-demo` under the OS temp folder). */
  dir?: string;
  /** Overrides of DEMO_CONFIG (tests shorten the run or change the seed). */
  config?: Partial<GrpoTrainerOptions>;
  /** Flip the advantages' sign (the learning test's control run). */
  negateAdvantages?: boolean;
  /** Show the progress bar (default true). */
  progress?: boolean;
  log?: (msg: string) => void;
}

export interface DemoReport {
  device: string;
  questions: number;
  /** Greedy execution accuracy before training, after the warm-up, after GRPO. */
  accuracy: { before: number; afterWarmup: number; afterGrpo: number };
  /** Mean sampled execution reward (DEMO_REWARD_SAMPLES per question at the training temperature, fixed seed). */
  sampledReward: { afterWarmup: number; afterGrpo: number };
  /** Supervised steps the warm-up took (it stops when greedy accuracy reaches DEMO_WARMUP.targetAccuracy). */
  warmupSteps: number;
  /** The pass rule: greedy execution accuracy after GRPO is above the warm-up's. */
  improved: boolean;
  /** The adapters after the warm-up and after GRPO (`sqlr1 eval --toy --lora` reproduces the accuracies). */
  adapters: { warmup: string; final: string };
  /** The last GRPO step's metrics. */
  metrics: Metrics;
  runDir: string;
  reportPath?: string;
  seconds: { total: number; warmup: number; grpo: number };
}

/** Synthesizes (once) the demo model and returns its path. */
export async function demoModelPath(dir: string, log: (m: string) => void = () => undefined): Promise<string> {
  const path = join(dir, `${DEMO_MODEL.shape}-${DEMO_MODEL.type}-s${DEMO_MODEL.seed}.gguf`);
  if (!existsSync(path)) {
    log(`synthesizing the demo model at ${path}`);
    await makeModel({ shape: DEMO_MODEL.shape, type: DEMO_MODEL.type, out: path, seed: DEMO_MODEL.seed });
  }
  return path;
}

/** The demo's system message: short, since every prompt token costs training time on a CPU. */
export const DEMO_SYSTEM_PROMPT = 'Answer with one SQLite query in a ```sql code block.';

/** One line per table, `table(column, ...)`: the toy schema in about 60 tokens instead of 300. */
export function compactSchema(dbPath: string): string {
  const db = new Database(dbPath, { readonly: true });
  try {
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid").all() as { name: string }[];
    return tables.map(({ name }) => {
      const cols = db.prepare(`PRAGMA table_info("${name.replace(/"/g, '""')}")`).all() as { name: string }[];
      return `${name}(${cols.map((c) => c.name).join(', ')})`;
    }).join('\n');
  } finally {
    db.close();
  }
}

/**
 * The demo's prompts (training and evaluation alike): the compact schema and the question through the model's
 * chat template, about 90 tokens each.
 */
export function demoPrompts(model: Model): PromptSource {
  const schemas = new Map<string, string>();
  const cache = new Map<string, number[]>();
  return {
    tokens({ question, dbPath }) {
      const key = `${dbPath}\u0000${question}`;
      let ids = cache.get(key);
      if (!ids) {
        let schema = schemas.get(dbPath);
        if (schema === undefined) schemas.set(dbPath, (schema = compactSchema(dbPath)));
        ids = model.encodeChat(buildPrompt({ schema, question }, { systemPrompt: DEMO_SYSTEM_PROMPT }));
        cache.set(key, ids);
      }
      return ids;
    },
  };
}

/** The toy task as a dataset: TOY_EXAMPLES over a fresh toy database in `dir`. */
export function toyDataset(dir: string): { question: string; dbPath: string; goldSql: string }[] {
  const dbPath = createToyDatabase(join(dir, 'company.sqlite'));
  return TOY_EXAMPLES.map((ex) => ({ question: ex.question, dbPath, goldSql: ex.query }));
}

/**
 * Mean execution reward of sampled answers: the fraction of `samples` answers per question, sampled at the
 * training temperature with a fixed seed, that return the gold result. Over 12 x 8 samples it is a far less
 * noisy measure than greedy accuracy over 12 questions (the learning test's measure).
 */
export async function sampledExecutionReward(model: Model, data: readonly { question: string; dbPath: string; goldSql: string }[],
  prompts: PromptSource, lora: LoraAdapter, options: { temperature: number; maxCompletionLength: number; samples?: number; seed?: number }): Promise<number> {
  const executor = new SqlExecutor({ timeoutMs: 2000 });
  try {
    const { rollouts } = await sampleRollouts(model, {
      prompts: data.map((ex) => prompts.tokens(ex)), numGenerations: options.samples ?? DEMO_REWARD_SAMPLES,
      maxCompletionLength: options.maxCompletionLength, temperature: options.temperature, topP: 1, topK: 0,
      seed: options.seed ?? DEMO_REWARD_SEED, lora,
    });
    const batch = await createReward({ executor }).scoreBatch(rollouts.map((r) => ({
      completion: r.completion.text, goldSql: data[r.promptIndex]!.goldSql, dbPath: data[r.promptIndex]!.dbPath,
    })));
    return batch.scores.filter((x) => x.correct).length / Math.max(1, rollouts.length);
  } finally {
    await executor.close();
  }
}

export async function runDemo(options: DemoOptions = {}): Promise<DemoReport> {
  const t0 = performance.now();
  const log = options.log ?? (() => undefined);
  const dir = options.dir ?? join(tmpdir(), 'sqlr1-demo');
  const modelPath = await demoModelPath(dir, log);
  const data = toyDataset(dir);
  const runDir = join(dir, 'run');
  rmSync(runDir, { recursive: true, force: true });
  const model: Model = await loadModel(modelPath, { device: options.device ?? 'auto', log });
  let trainer: GrpoTrainer | undefined;
  try {
    log(`model: ${model.info.nLayer} layers, hidden ${model.info.nEmbd}, vocabulary ${model.info.nVocab}, on ${model.device}; ` +
      `${data.length} questions on the toy company database`);
    const prompts = demoPrompts(model);
    trainer = await GrpoTrainer.create({
      ...DEMO_CONFIG, ...options.config, model, trainDataset: data, evalDataset: data, outputDir: runDir, prompts,
      ...(options.negateAdvantages ? { negateAdvantages: true } : {}), progress: options.progress ?? true, log,
    });
    const c = trainer.config;
    const acc = async () => (await trainer!.evaluate())['eval/execution_accuracy'] ?? 0;
    const sampled = () => sampledExecutionReward(model, data, prompts, trainer!.lora, { temperature: c.temperature, maxCompletionLength: c.maxCompletionLength });
    const before = await acc();
    log(`execution accuracy before training: ${before.toFixed(3)} (greedy, ${data.length} questions)`);
    const tw = performance.now();
    const w = await warmupUntil(trainer, data, { ...DEMO_WARMUP, prompts });
    const warmupS = (performance.now() - tw) / 1000;
    const afterWarmup = w.accuracy;
    await writeAtomicDir(join(runDir, 'warmup'), async (tmp) => trainer!.lora.save(join(tmp, ADAPTER_FILE)));
    const rewardWarmup = await sampled();
    log(`supervised warm-up: ${w.steps} steps in ${warmupS.toFixed(1)} s (loss ${w.loss.toFixed(3)}; ` +
      `${w.reached ? `stopped at greedy accuracy >= ${DEMO_WARMUP.targetAccuracy}` : `target ${DEMO_WARMUP.targetAccuracy} not reached`}); ` +
      `execution accuracy ${afterWarmup.toFixed(3)}, mean sampled execution reward ${rewardWarmup.toFixed(3)} (T ${c.temperature})`);
    const tg = performance.now();
    const result = await trainer.train();
    const grpoS = (performance.now() - tg) / 1000;
    const afterGrpo = result.evalMetrics?.['eval/execution_accuracy'] ?? await acc();
    const rewardGrpo = await sampled();
    log(`GRPO: ${result.step} steps in ${grpoS.toFixed(1)} s; execution accuracy ${afterGrpo.toFixed(3)}, ` +
      `mean sampled execution reward ${rewardGrpo.toFixed(3)}`);
    const report: DemoReport = {
      device: model.device, questions: data.length, accuracy: { before, afterWarmup, afterGrpo },
      sampledReward: { afterWarmup: rewardWarmup, afterGrpo: rewardGrpo }, warmupSteps: w.steps,
      improved: afterGrpo > afterWarmup, metrics: result.metrics, runDir,
      adapters: { warmup: join(runDir, 'warmup', ADAPTER_FILE), final: result.adapterPath },
      ...(result.reportPath ? { reportPath: result.reportPath } : {}),
      seconds: { total: (performance.now() - t0) / 1000, warmup: warmupS, grpo: grpoS },
    };
    writeFileSync(join(runDir, DEMO_REPORT_FILE), JSON.stringify(report, null, 2) + '\n');
    log(`execution accuracy (greedy, ${data.length} questions): before ${before.toFixed(3)} -> after warm-up ${afterWarmup.toFixed(3)} -> after GRPO ${afterGrpo.toFixed(3)}`);
    log(`pass rule: GRPO must raise greedy execution accuracy above the warm-up's (${afterGrpo.toFixed(3)} > ${afterWarmup.toFixed(3)}): ` +
      `${report.improved ? 'passed' : 'FAILED'}; ${report.seconds.total.toFixed(0)} s in all`);
    log(`run directory: ${runDir}${report.reportPath ? `; report: ${report.reportPath}` : ''}`);
    log(`check: sqlr1 eval --toy --model ${modelPath} --lora ${report.adapters.final}`);
    return report;
  } finally {
    await trainer?.dispose();
    model.dispose();
  }
}
