/**
 * GrpoTrainer: GRPO on text-to-SQL with a LoRA adapter on a frozen base model.
 *
 *   const trainer = await GrpoTrainer.create({ ...config, model, trainDataset, evalDataset, callbacks });
 *   const result = await trainer.train({ signal });
 *
 * One step, in the contract's order (docs/architecture.md): take `promptsPerStep` questions; sample
 * `numGenerations` completions each in one batched decode with prefix sharing (the sampler's log-probs kept);
 * score them in the SQL workers while the device computes the reference (adapter off, only when beta > 0) and,
 * for several updates per batch, the old log-probs; group-normalize the advantages; then for each of
 * `numIterations` updates and each micro-batch of at most `microBatchTokens` padded tokens: policy log-probs with
 * activations kept, the loss (normalizers over the whole batch), backward; clip; one AdamW step. With one update
 * per batch the old log-probs are the policy pass's own values (the first ratio is exactly 1).
 *
 * Every random draw is derived from (seed, step, stream): data order per epoch and the sampler's seeds, so a run
 * resumed from a checkpoint repeats the straight run exactly (byte-identical files on the CPU).
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Sqlr1Error } from '../errors.js';
import { loadModel, type Model, type ModelContext } from '../model/model.js';
import { createLora, loadLora, type LoraAdapter } from '../model/lora.js';
import { SqlExecutor } from '../sql/executor.js';
import { createReward, type Reward } from '../rewards/compose.js';
import type { RewardBatch, RewardComponent } from '../rewards/types.js';
import { PromptRenderer } from '../spider/prompt.js';
import { shuffleWithSeed } from '../spider/dataset.js';
import { LoraTrainer, packedTokens } from '../train/lora-trainer.js';
import { AdamW, loraParams } from '../train/params.js';
import { Tensor, backward } from '../train/tensor.js';
import { grpoLoss } from '../train/grpo-loss.js';
import { evaluateModel, evalMetrics } from '../eval/evaluate.js';
import { computeAdvantages } from './advantages.js';
import { learningRateAt } from './schedule.js';
import { configToYaml, resolveConfig, type GrpoConfig } from './config.js';
import {
  ADAPTER_FILE, OPTIMIZER_FILE, checkpointDir, readTrainerState, writeAtomicDir, writeTrainerState, type TrainerState,
} from './checkpoint.js';
import { Progress, RunLog, mean, std, type CompletionRecord, type Metrics } from './metrics.js';
import { derivedSeed, microBatches, sampleRollouts, type Rollout } from './rollout.js';
import { answerTokens, supervisedStep } from './sft.js';
import type { ProcessGroup } from '../distributed/group.js';
import { allReduceGradients, broadcastParams } from '../distributed/params.js';
import { chooseTransport } from '../distributed/nccl.js';
import { combineRankMetrics, samplingTotals, stepMetrics, type RankStepTotals } from './step-metrics.js';

/** One training or eval question: any object with these fields (a SpiderExample has `query` for the gold SQL). */
export interface GrpoExample {
  question: string;
  dbPath: string;
  goldSql?: string;
  query?: string;
  /** Spider hardness (easy | medium | hard | extra), for eval's per-level accuracy. */
  hardness?: string;
}

/** An iterable of examples, or an object with an `examples` array (SpiderDataset). */
export type GrpoDataset = Iterable<GrpoExample> | { readonly examples: readonly GrpoExample[] };

export interface GrpoCallbacks {
  /** Each logged step's metrics (with step and epoch). */
  onLog?(metrics: Metrics): void | Promise<void>;
  /** Each evaluation's eval/* metrics (with step). */
  onEval?(metrics: Metrics): void | Promise<void>;
  /** Each checkpoint folder, once renamed into place. */
  onCheckpoint?(dir: string): void | Promise<void>;
}

/** Renders a question into prompt token ids (default: a PromptRenderer over the model's chat template). */
export interface PromptSource {
  tokens(example: { question: string; dbPath: string }): readonly number[];
}

export type GrpoTrainerOptions = Partial<Omit<GrpoConfig, 'model' | 'lora'>> & {
  /** A GGUF path or a loaded model (the caller keeps ownership of a loaded one). */
  model: string | Model;
  lora?: Partial<GrpoConfig['lora']> | string;
  trainDataset: GrpoDataset;
  evalDataset?: GrpoDataset;
  /** Extra reward functions, added to the preset's components (their names may be weighted in rewardWeights). */
  rewardFunctions?: readonly RewardComponent[];
  callbacks?: GrpoCallbacks;
  /** A checkpoint folder (`RUN/checkpoint-N`) to continue from. */
  resumeFrom?: string;
  /** Prompt rendering (default: the schema and question through the model's chat template). */
  prompts?: PromptSource;
  /** Progress display on stderr (default true; SQLR1_PROGRESS=0 turns it off too). */
  progress?: boolean;
  /** Informational messages (default: stderr unless SQLR1_QUIET=1). */
  log?: (msg: string) => void;
  /** Sample every completion to its full length (ignore stop strings and end-of-generation): benchmarks. */
  forceFullLength?: boolean;
  /** Flip the advantages' sign (a test of the sign: learning must then go the wrong way). */
  negateAdvantages?: boolean;
  /** Write report.html at the end (default true). */
  report?: boolean;
  /**
   * This process's place in a data-parallel run (`ProcessGroup.connect(distEnvFrom())`; `sqlr1 train` does it
   * when WORLD_SIZE > 1). Each rank samples `promptsPerStep` questions of its own per step (the step's batch is
   * promptsPerStep x world size), gradients are summed over ranks before AdamW, and rank 0 alone writes the run
   * directory while the others wait.
   */
  processGroup?: ProcessGroup;
};

export interface TrainResult {
  /** GRPO steps done in total (including those before a resume). */
  step: number;
  epoch: number;
  aborted: boolean;
  runDir: string;
  /** The last logged step's metrics. */
  metrics: Metrics;
  /** The last eval's metrics (eval/*), when there was one. */
  evalMetrics?: Metrics;
  bestMetric: number | null;
  /** final/adapter.gguf, or the last checkpoint's adapter when aborted. */
  adapterPath: string;
  /** report.html, when written. */
  reportPath?: string;
}

/** Times of one step's parts, seconds. */
interface StepTimes { rollout: number; reward: number; reference: number; policy: number; optimizer: number }

const TRAINER_KEYS = new Set(['model', 'trainDataset', 'evalDataset', 'rewardFunctions', 'callbacks', 'resumeFrom', 'prompts', 'progress', 'log',
  'forceFullLength', 'negateAdvantages', 'report', 'processGroup']);

interface Example { question: string; dbPath: string; goldSql: string; hardness?: string }

function toExamples(ds: GrpoDataset | undefined, what: string): Example[] {
  if (ds === undefined) return [];
  const items: readonly GrpoExample[] = 'examples' in (ds as object) && Array.isArray((ds as { examples: unknown }).examples)
    ? (ds as { examples: readonly GrpoExample[] }).examples
    : [...(ds as Iterable<GrpoExample>)];
  return items.map((ex, i) => {
    const gold = ex?.goldSql ?? ex?.query;
    if (!ex || typeof ex.question !== 'string' || typeof ex.dbPath !== 'string' || typeof gold !== 'string') {
      throw new Sqlr1Error('ERR_INVALID_ARG', `${what}[${i}]: expected { question, dbPath, goldSql (or query) } strings, received ${JSON.stringify(ex)?.slice(0, 200)}`);
    }
    return { question: ex.question, dbPath: ex.dbPath, goldSql: gold, ...(ex.hardness ? { hardness: ex.hardness } : {}) };
  });
}

export class GrpoTrainer {
  private state: TrainerState;
  private context: ModelContext | undefined;
  private lastMetrics: Metrics = {};
  private lastEval: Metrics | undefined;
  private numTokens = 0;
  private readonly promptCache = new Map<number, readonly number[]>();

  private constructor(
    readonly config: GrpoConfig,
    readonly model: Model,
    private readonly ownsModel: boolean,
    readonly lora: LoraAdapter,
    readonly trainer: LoraTrainer,
    readonly optimizer: AdamW,
    private readonly executor: SqlExecutor,
    private readonly reward: Reward,
    private readonly prompts: PromptSource,
    private readonly train_: Example[],
    private readonly eval_: Example[],
    private readonly options: GrpoTrainerOptions,
    resumed: TrainerState | undefined,
  ) {
    this.state = resumed ?? {
      step: 0, epoch: 0, dataCursor: 0, sftStepsDone: 0,
      rng: { seed: config.seed, dataSeed: derivedSeed(config.seed, 0, 0x64617461), samplingSeed: derivedSeed(config.seed, 0, 0x73616d70) },
      bestMetric: null, bestStep: null, metricHistoryLength: 0, completionHistoryLength: 0, numTokens: 0,
    };
    this.numTokens = this.state.numTokens ?? 0;
  }

  /**
   * Validates the options (ERR_CONFIG before anything is loaded), loads the model (when given a path), creates
   * or loads the adapter, the optimizer and the SQL workers. With `resumeFrom`, the adapter, the optimizer's
   * moments and the trainer state come from that checkpoint.
   */
  static async create(options: GrpoTrainerOptions): Promise<GrpoTrainer> {
    if (!options || typeof options !== 'object') throw new Sqlr1Error('ERR_INVALID_ARG', 'GrpoTrainer.create: expected an options object');
    const record: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(options)) if (!TRAINER_KEYS.has(k) && v !== undefined) record[k] = v;
    if (typeof options.model === 'string') record['model'] = options.model;
    const config = resolveConfig(record, '<GrpoTrainer options>', { rewardComponents: (options.rewardFunctions ?? []).map((f) => f.name) });
    const train = toExamples(options.trainDataset, 'trainDataset');
    if (train.length === 0) throw new Sqlr1Error('ERR_INVALID_ARG', 'GrpoTrainer.create: trainDataset has no examples');
    const evalSet = toExamples(options.evalDataset, 'evalDataset');
    const resumed = options.resumeFrom !== undefined ? readTrainerState(options.resumeFrom) : undefined;
    if (options.model === undefined || options.model === null) throw new Sqlr1Error('ERR_INVALID_ARG', 'GrpoTrainer.create: expected model, a GGUF path or a loaded Model');
    const log = options.log ?? ((m: string) => { if (process.env.SQLR1_QUIET !== '1') process.stderr.write(m + '\n'); });
    const group = options.processGroup;
    if (group && group.worldSize > 1 && config.sftSteps > 0) {
      throw new Sqlr1Error('ERR_CONFIG', `sft_steps (${config.sftSteps}) runs in one process: run the warm-up alone and pass its adapter as lora.path to the data-parallel run`);
    }

    const ownsModel = typeof options.model === 'string';
    const model = typeof options.model === 'string' ? await loadModel(options.model, { device: config.device, log }) : options.model;
    let lora: LoraAdapter | undefined;
    let trainer: LoraTrainer | undefined;
    const executor = new SqlExecutor({ timeoutMs: config.sqlTimeoutMs });
    try {
      if (resumed) lora = await loadLora(model, join(options.resumeFrom!, ADAPTER_FILE));
      else if (config.lora.path) lora = await loadLora(model, config.lora.path);
      else lora = createLora(model, { rank: config.lora.rank, alpha: config.lora.alpha, targets: config.lora.targets, seed: config.seed });
      const maxTokens = Math.max(config.microBatchTokens, config.maxPromptLength + config.maxCompletionLength);
      trainer = await LoraTrainer.create(model, lora, { maxTokens });
      // Every rank starts from rank 0's adapter (a resumed run's ranks read the same checkpoint).
      if (group && group.worldSize > 1) {
        const backend = await chooseTransport(group, model.device, config.ddpBackend);
        if (group.rank === 0) log(`data-parallel: ${group.worldSize} ranks, gradients over ${backend}`);
        await broadcastParams(loraParams(lora), group);
      }
      const optimizer = new AdamW(loraParams(lora), { lr: config.learningRate, weightDecay: config.weightDecay });
      if (resumed) await optimizer.load(join(options.resumeFrom!, OPTIMIZER_FILE));
      const reward = createReward({
        executor, preset: config.rewardPreset, weights: config.rewardWeights, ...(options.rewardFunctions ? { functions: [...options.rewardFunctions] } : {}),
      });
      const prompts = options.prompts ?? new PromptRenderer(model);
      return new GrpoTrainer(config, model, ownsModel, lora, trainer, optimizer, executor, reward, prompts, train, evalSet, { ...options, log }, resumed);
    } catch (e) {
      trainer?.dispose();
      lora?.dispose();
      await executor.close();
      if (ownsModel) model.dispose();
      throw e;
    }
  }

  /** GRPO steps of the whole run: max_steps, or num_train_epochs passes over the training set. */
  get totalSteps(): number {
    const c = this.config;
    if (c.maxSteps > 0) return c.maxSteps;
    return Math.ceil((c.numTrainEpochs * this.train_.length) / (c.promptsPerStep * this.worldSize));
  }

  /** The data-parallel group, when this process is one of several ranks (a group of one is a single process). */
  private get group(): ProcessGroup | undefined {
    const g = this.options.processGroup;
    return g && g.worldSize > 1 ? g : undefined;
  }

  /** Ranks of the data-parallel run (1 without a process group). */
  get worldSize(): number {
    return this.group?.worldSize ?? 1;
  }

  /** Rank 0 (or the only process) writes the run directory and shows progress. */
  private get lead(): boolean {
    return (this.group?.rank ?? 0) === 0;
  }

  /** Whether any rank's signal fired (ranks stop at the same step). */
  private async anyAborted(signal: AbortSignal | undefined): Promise<boolean> {
    const aborted = signal?.aborted ?? false;
    return this.group ? (await this.group.allGather(aborted)).some(Boolean) : aborted;
  }

  /** The other ranks wait here while rank 0 writes or evaluates (up to 6 hours, not the group's own limit). */
  private async waitForLead(): Promise<void> {
    await this.group?.barrier(6 * 3600_000);
  }

  get step(): number {
    return this.state.step;
  }

  get runDir(): string {
    return this.config.outputDir;
  }

  private log(msg: string): void {
    this.options.log?.(msg);
  }

  /** The prompt token ids of training example `i` (left-truncated to maxPromptLength). */
  private promptOf(ex: Example, key?: number): readonly number[] {
    if (key !== undefined) {
      const hit = this.promptCache.get(key);
      if (hit) return hit;
    }
    let ids = this.prompts.tokens({ question: ex.question, dbPath: ex.dbPath });
    if (ids.length > this.config.maxPromptLength) ids = ids.slice(ids.length - this.config.maxPromptLength);
    if (key !== undefined) this.promptCache.set(key, ids);
    return ids;
  }

  /** The training stream: epoch e is the training set shuffled with a seed derived from (dataSeed, e). */
  private exampleAt(cursor: number): { index: number; example: Example } {
    const n = this.train_.length;
    const epoch = Math.floor(cursor / n);
    if (this.orderEpoch !== epoch) {
      this.order = shuffleWithSeed(this.train_.map((_, i) => i), derivedSeed(this.state.rng.dataSeed, epoch, 0));
      this.orderEpoch = epoch;
    }
    const index = this.order[cursor % n]!;
    return { index, example: this.train_[index]! };
  }
  private order: number[] = [];
  private orderEpoch = -1;

  /**
   * Supervised warm-up on the training set's gold answers (`sftSteps` steps at `sftLearningRate`, batches of
   * `promptsPerStep` x `numGenerations` questions, as many sequences as a GRPO step, in the stream's order); the optimizer's moments are reset afterwards so GRPO starts
   * fresh. Runs as part of `train` when the state says it has not been done.
   */
  async warmup(options: { steps?: number; lr?: number; batchSize?: number; onStep?: (step: number, loss: number) => void; signal?: AbortSignal } = {}): Promise<{ loss: number; steps: number }> {
    if (this.worldSize > 1) throw new Sqlr1Error('ERR_CONFIG', 'the supervised warm-up runs in one process: run it alone and pass its adapter as lora.path to the data-parallel run');
    const steps = options.steps ?? this.config.sftSteps;
    const lr = options.lr ?? this.config.sftLearningRate;
    // A warm-up batch holds as many sequences as a GRPO step trains on (prompts x generations).
    const B = Math.min(options.batchSize ?? this.config.promptsPerStep * this.config.numGenerations, this.train_.length);
    const opt = new AdamW(loraParams(this.lora), { lr, weightDecay: 0 });
    let loss = NaN;
    let done = 0;
    for (let s = 0; s < steps; s++) {
      if (options.signal?.aborted) break;
      const batch = Array.from({ length: B }, (_, j) => {
        const { index, example } = this.exampleAt(s * B + j);
        return { prompt: this.promptOf(example, index), answer: answerTokens(this.model, example.goldSql) };
      });
      // The warm-up's learning rate decays linearly to 0, so its last steps settle rather than overshoot.
      const stepLr = lr * (1 - s / steps);
      const r = await supervisedStep(this.trainer, opt, batch, { lr: stepLr, maxGradNorm: this.config.maxGradNorm, microBatchTokens: this.config.microBatchTokens });
      loss = r.loss;
      done++;
      options.onStep?.(s + 1, r.loss);
    }
    this.order = [];
    this.orderEpoch = -1;
    this.state.sftStepsDone += done;
    const store = loraParams(this.lora);
    for (const name of store.names()) {
      const n = store.get(name).length;
      store.setMoments(name, { m: new Float32Array(n), v: new Float32Array(n) });
    }
    store.zeroGrad();
    return { loss, steps: done };
  }

  /**
   * Runs the warm-up (if not done), then GRPO steps until `totalSteps` or an abort; logs, evaluates and saves
   * along the way. An abort finishes the step in progress, saves a checkpoint and resolves (aborted: true).
   */
  async train(options: { signal?: AbortSignal } = {}): Promise<TrainResult> {
    const c = this.config;
    const signal = options.signal;
    const dir = c.outputDir;
    const lead = this.lead;
    let runLog: RunLog | undefined;
    if (lead) {
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'config.yaml'), configToYaml(c));
      runLog = new RunLog(dir, this.options.resumeFrom !== undefined
        ? { metricLines: this.state.metricHistoryLength, completionLines: this.state.completionHistoryLength } : undefined);
    }
    const total = this.totalSteps;
    const progress = this.options.progress === false || !lead ? undefined : new Progress(total, this.state.step);
    const cb = this.options.callbacks ?? {};

    if (this.state.sftStepsDone < c.sftSteps) {
      const t0 = performance.now();
      const r = await this.warmup({ steps: c.sftSteps - this.state.sftStepsDone, ...(signal ? { signal } : {}) });
      progress?.log(`supervised warm-up: ${r.steps} steps, final loss ${r.loss.toFixed(4)} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    }

    let aborted = false;
    let lastSaved = -1;
    try {
      while (this.state.step < total) {
        if (await this.anyAborted(signal)) { aborted = true; break; }
        const m = await this.trainStep();
        const step = this.state.step;
        const logged = step % c.loggingSteps === 0 || step === total;
        if (logged) {
          runLog?.metrics(step, this.state.epoch, m.metrics);
          runLog?.completions(m.completions);
          this.lastMetrics = { step, epoch: this.state.epoch, ...m.metrics };
          await cb.onLog?.(this.lastMetrics);
        }
        if (this.eval_.length > 0 && (step % c.evalSteps === 0 || step === total)) {
          // Rank 0 evaluates (every rank holds the same adapter); the others wait.
          if (lead) {
            const ev = await this.evaluate();
            this.lastEval = ev;
            runLog?.metrics(step, this.state.epoch, ev);
            await cb.onEval?.({ step, ...ev });
            const acc = ev['eval/execution_accuracy'];
            if (acc !== undefined && (this.state.bestMetric === null || acc > this.state.bestMetric)) {
              this.state.bestMetric = acc;
              this.state.bestStep = step;
              await writeAtomicDir(join(dir, 'best'), async (tmp) => this.lora.save(join(tmp, ADAPTER_FILE)));
            }
          }
          await this.waitForLead();
        }
        progress?.update({ step, reward: m.metrics['reward'] ?? 0, accuracy: m.metrics['frac_correct'] ?? 0, stepTime: m.metrics['step_time'] ?? 0,
          ...(this.lastEval?.['eval/execution_accuracy'] !== undefined ? { evalAccuracy: this.lastEval['eval/execution_accuracy'] } : {}) }, logged);
        const stopping = await this.anyAborted(signal);
        if (step % c.saveSteps === 0 || step === total || stopping) {
          await this.checkpoint(runLog, checkpointDir(dir, step), cb);
          lastSaved = step;
        }
        if (stopping) { aborted = true; break; }
      }
      if (aborted && lastSaved !== this.state.step) await this.checkpoint(runLog, checkpointDir(dir, this.state.step), cb);
      let adapterPath = join(checkpointDir(dir, this.state.step), ADAPTER_FILE);
      if (!aborted) {
        if (lead) await writeAtomicDir(join(dir, 'final'), async (tmp) => this.lora.save(join(tmp, ADAPTER_FILE)));
        await this.waitForLead();
        adapterPath = join(dir, 'final', ADAPTER_FILE);
      }
      progress?.stop();
      let reportPath: string | undefined;
      if (this.options.report !== false && lead) {
        try {
          const reportModule = '../report/index.js';
          reportPath = await ((await import(reportModule)) as { writeReport(d: string): Promise<string> }).writeReport(dir);
        } catch (e) {
          this.log(`report not written: ${(e as Error).message}`);
        }
      }
      return {
        step: this.state.step, epoch: this.state.epoch, aborted, runDir: dir, metrics: this.lastMetrics,
        ...(this.lastEval ? { evalMetrics: this.lastEval } : {}), bestMetric: this.state.bestMetric, adapterPath,
        ...(reportPath ? { reportPath } : {}),
      };
    } finally {
      progress?.stop();
      await this.context?.dispose();
      this.context = undefined;
    }
  }

  /** Rank 0 writes checkpoint-N with the run log's line counts (for resume); the others wait. */
  private async checkpoint(runLog: RunLog | undefined, dir: string, cb: GrpoCallbacks): Promise<void> {
    if (this.lead) {
      this.state.metricHistoryLength = runLog?.metricLines ?? 0;
      this.state.completionHistoryLength = runLog?.completionLines ?? 0;
      await this.saveCheckpoint(dir);
      await cb.onCheckpoint?.(dir);
    }
    await this.waitForLead();
  }

  /** Writes checkpoint-N (adapter, optimizer, trainer_state.json) atomically. */
  async saveCheckpoint(dir: string): Promise<void> {
    this.state.numTokens = this.numTokens;
    await writeAtomicDir(dir, async (tmp) => {
      await this.lora.save(join(tmp, ADAPTER_FILE));
      await this.optimizer.save(join(tmp, OPTIMIZER_FILE));
      writeTrainerState(tmp, this.state);
    });
  }

  /** Execution accuracy of the current adapter on `evalSamples` eval questions (eval/* metrics). */
  async evaluate(): Promise<Metrics> {
    const c = this.config;
    const examples = c.evalSamples > 0 ? this.eval_.slice(0, c.evalSamples) : this.eval_;
    const report = await evaluateModel(this.model, {
      examples, lora: this.lora, samples: Math.max(1, c.evalVote), vote: c.evalVote > 1, temperature: c.evalVote > 1 ? c.temperature : 0,
      maxNewTokens: c.maxCompletionLength, executor: this.executor, prompts: this.prompts,
    });
    return evalMetrics(report);
  }

  /** One GRPO step (see the header); returns its metrics and the completions to log. */
  async trainStep(): Promise<{ metrics: Metrics; completions: CompletionRecord[] }> {
    const c = this.config;
    const tStep = performance.now();
    const P = c.promptsPerStep;
    const K = c.numGenerations;
    const step = this.state.step;
    const times: StepTimes = { rollout: 0, reward: 0, reference: 0, policy: 0, optimizer: 0 };
    const group = this.group;
    const rank = group?.rank ?? 0;

    // 1. Questions from the stream (rank r takes the step's r-th share of promptsPerStep).
    const picked = Array.from({ length: P }, (_, j) => this.exampleAt(this.state.dataCursor + rank * P + j));
    const examples = picked.map((p) => p.example);
    const prompts = picked.map((p) => this.promptOf(p.example, p.index));

    // 2. Rollouts (adapter on), in a context kept between steps.
    this.context ??= this.model.createContext({ nSeq: P * K, nCtx: c.maxPromptLength + c.maxCompletionLength, nBatch: Math.min(512, c.maxPromptLength + c.maxCompletionLength) });
    this.lora.setEnabled(true);
    const { rollouts, seconds } = await sampleRollouts(this.model, {
      prompts, numGenerations: K, maxCompletionLength: c.maxCompletionLength, temperature: c.temperature, topP: c.topP, topK: c.topK,
      seed: derivedSeed(this.state.rng.samplingSeed, step, 1), firstStream: rank * P * K, lora: this.lora, ...(this.context ? { context: this.context } : {}),
      ...(this.options.forceFullLength ? { forceFullLength: true } : {}),
    });
    times.rollout = seconds;
    const N = rollouts.length;

    // 3. Scoring runs in the SQL workers while the device computes reference and old log-probs.
    const tReward = performance.now();
    const scoring = this.reward.scoreBatch(rollouts.map((r) => {
      const ex = examples[r.promptIndex]!;
      return { completion: r.completion.text, goldSql: ex.goldSql, dbPath: ex.dbPath, prompt: ex.question,
        extras: { question: ex.question, completionTokens: r.completion.tokens.length } };
    })).then((b) => { times.reward = (performance.now() - tReward) / 1000; return b; });
    scoring.catch(() => undefined);

    const sequences = rollouts.map((r) => [...r.promptTokens, ...r.completion.tokens]);
    const starts = rollouts.map((r) => r.promptTokens.length);
    const share = c.sharePrompts;
    const input = (mb: readonly number[]) => ({ sequences: mb.map((i) => sequences[i]!), completionStart: mb.map((i) => starts[i]!), sharePrompts: share });
    const tokensOf = (mb: readonly number[]) => packedTokens(input(mb));
    const T = c.temperature > 0 ? c.temperature : 1;
    const kept = rollouts.map((r) => !(c.maskTruncatedCompletions && r.truncated));
    const keptIdx = rollouts.map((_, i) => i).filter((i) => kept[i]);
    const refLp: (Float32Array | undefined)[] = new Array(N);
    const oldLp: (Float32Array | undefined)[] = new Array(N);
    const perSequence = async (idx: number[], into: (Float32Array | undefined)[], adapter: boolean) => {
      for (const mb of microBatches(idx, c.microBatchTokens, tokensOf)) {
        const packed = this.trainer.pack(input(mb));
        const lp = await this.trainer.logprobs(packed, { adapter, temperature: T });
        const C = packed.maxCompletion;
        mb.forEach((i, j) => { into[i] = lp.slice(j * C, j * C + packed.completionLength[j]!); });
      }
    };
    let t0 = performance.now();
    if (c.beta > 0) {
      await perSequence(keptIdx, refLp, false);
      times.reference = (performance.now() - t0) / 1000;
    }
    t0 = performance.now();
    if (c.numIterations > 1) await perSequence(keptIdx, oldLp, true);
    let policySeconds = (performance.now() - t0) / 1000;

    // 4. Advantages.
    const batch: RewardBatch & { goldError?: boolean[] } = await scoring;
    const totals = batch.totals as readonly (number | null)[];
    const adv = computeAdvantages(totals, K, c.scaleRewards);
    const sign = this.options.negateAdvantages ? -1 : 1;
    const include = rollouts.map((_, i) => kept[i]! && adv.valid[i] === 1);
    const incIdx = rollouts.map((_, i) => i).filter((i) => include[i]);
    // Sequences with a zero advantage and no KL term have a zero gradient: they count in the normalizers only.
    const active = incIdx.filter((i) => c.beta > 0 || adv.advantages[i] !== 0);
    const incTokens = incIdx.reduce((a, i) => a + rollouts[i]!.completion.tokens.length, 0);
    const mbs = microBatches(active, c.microBatchTokens, tokensOf);
    // The normalizers count the whole step, every rank's sequences (the gradients are then summed over ranks).
    const counts = { sequences: incIdx.length, tokens: incTokens, microBatches: mbs.length };
    const { sequences: normSeqs, tokens: normTokens, microBatches: normMbs } = group
      ? (await group.allGather(counts)).reduce((a, b) => ({ sequences: a.sequences + b.sequences, tokens: a.tokens + b.tokens, microBatches: a.microBatches + b.microBatches }))
      : counts;

    // 5. Updates.
    let lossSum = 0;
    let gradNorm = 0;
    const tok = { kl: 0, clipLow: 0, clipHigh: 0, clipRegion: 0, n: 0 };
    const lr = learningRateAt(step, { learningRate: c.learningRate, warmupSteps: c.warmupSteps, lrSchedulerType: c.lrSchedulerType, totalSteps: this.totalSteps });
    let optSeconds = 0;
    let allReduceSeconds = 0;
    for (let it = 0; it < c.numIterations; it++) {
      t0 = performance.now();
      for (const mb of mbs) {
        const packed = this.trainer.pack(input(mb));
        const lp = await this.trainer.logprobs(packed, { keep: true, temperature: T });
        const n = mb.length;
        const C = packed.maxCompletion;
        if (c.numIterations === 1) mb.forEach((i, j) => { oldLp[i] = lp.slice(j * C, j * C + packed.completionLength[j]!); });
        const rows = (arr: (Float32Array | undefined)[]) => {
          const out = new Float32Array(n * C);
          mb.forEach((i, j) => out.set(arr[i]!, j * C));
          return out;
        };
        const old = rows(oldLp);
        const logp = Tensor.constant(lp, [n, C], { requiresGrad: true });
        let isWeights: Tensor | undefined;
        if (c.importanceSamplingCorrection) {
          const w = new Float32Array(n * C);
          mb.forEach((i, j) => {
            const s = rollouts[i]!.completion.logprobs;
            for (let k = 0; k < packed.completionLength[j]!; k++) w[j * C + k] = Math.min(Math.exp(old[j * C + k]! - s[k]!), c.importanceSamplingCap);
          });
          isWeights = Tensor.constant(w, [n, C]);
        }
        const loss = grpoLoss({
          logp, oldLogp: Tensor.constant(old, [n, C]), ...(c.beta > 0 ? { refLogp: Tensor.constant(rows(refLp), [n, C]) } : {}),
          advantages: Tensor.constant(Float32Array.from(mb, (i) => sign * adv.advantages[i]!), [n]),
          mask: Tensor.constant(packed.mask, [n, C]), epsLow: c.epsilon, epsHigh: c.epsilonHigh ?? c.epsilon, beta: c.beta,
          lossType: c.lossType, klEstimator: c.klEstimator, maxLen: c.maxCompletionLength,
          normalizer: { sequences: Math.max(normSeqs, n), tokens: normTokens, microBatches: normMbs },
          ...(isWeights ? { isWeights } : {}),
        });
        const outputs = [loss.clipLow, loss.clipHigh, loss.clipRegion, ...(loss.kl ? [loss.kl] : [])];
        const r = await backward(loss.loss, { outputs });
        await this.trainer.backward(r.grads.get(logp)!);
        if (it === 0) {
          const ntok = packed.mask.reduce((a, b) => a + b, 0);
          tok.clipLow += r.values.get(loss.clipLow)![0]! * ntok;
          tok.clipHigh += r.values.get(loss.clipHigh)![0]! * ntok;
          tok.clipRegion += r.values.get(loss.clipRegion)![0]! * ntok;
          if (loss.kl) tok.kl += r.values.get(loss.kl)![0]! * ntok;
          tok.n += ntok;
        }
        lossSum += r.loss;
      }
      policySeconds += (performance.now() - t0) / 1000;
      t0 = performance.now();
      const store = loraParams(this.lora);
      if (group) allReduceSeconds += await allReduceGradients(store, group);
      gradNorm = store.gradNorm();
      if (normMbs > 0 && lr > 0) {
        store.clipGradNorm(c.maxGradNorm);
        await this.optimizer.step({ lr });
      }
      store.zeroGrad();
      optSeconds += (performance.now() - t0) / 1000;
    }
    times.policy = policySeconds;
    times.optimizer = optSeconds;

    // 6. Bookkeeping and metrics.
    this.state.step = step + 1;
    this.state.dataCursor += P * this.worldSize;
    this.state.epoch = this.state.dataCursor / this.train_.length;
    const promptTokens = rollouts.reduce((a, r) => a + r.promptTokens.length, 0);
    const completionLens = rollouts.map((r) => r.completion.tokens.length);
    const stepTokens = promptTokens + completionLens.reduce((a, b) => a + b, 0);
    this.numTokens += stepTokens;
    const own: Metrics = { ...this.rewardMetrics(batch, totals) };
    own['frac_reward_zero_std'] = adv.fracZeroStd;
    own['completions/mean_length'] = mean(completionLens);
    own['completions/min_length'] = Math.min(...completionLens);
    own['completions/max_length'] = Math.max(...completionLens);
    own['completions/clipped_ratio'] = rollouts.filter((r) => r.truncated).length / N;
    own['grad_norm'] = gradNorm;
    own['learning_rate'] = lr;
    own['time/rollout'] = times.rollout;
    own['time/reward'] = times.reward;
    own['time/reference'] = times.reference;
    own['time/policy'] = times.policy;
    own['time/optimizer'] = times.optimizer;
    if (group) own['time/all_reduce'] = allReduceSeconds;
    own['frac_active'] = active.length / N;
    const valid = totals.filter((x): x is number => x !== null);
    const rankTotals: RankStepTotals = {
      metrics: own, tok, loss: lossSum / c.numIterations, stepTokens, numTokens: this.numTokens,
      rewards: { sum: valid.reduce((a, b) => a + b, 0), sq: valid.reduce((a, b) => a + b * b, 0), n: valid.length },
      stepTime: (performance.now() - tStep) / 1000, sampling: samplingTotals(rollouts, oldLp, include), kl: c.beta > 0,
    };
    const metrics = group ? combineRankMetrics(await group.allGather(rankTotals)) : stepMetrics(rankTotals);

    const completions: CompletionRecord[] = rollouts.slice(0, 64).map((r, i) => ({
      step: this.state.step, prompt: examples[r.promptIndex]!.question, completion: r.completion.text,
      sql: batch.scores[i]?.extracted?.sql ?? '', reward: totals[i] ?? null, components: Object.fromEntries(
        Object.entries(batch.components).map(([k, v]) => [k, v[i] ?? null])),
      correct: batch.scores[i]?.correct ?? false,
    }));
    return { metrics, completions };
  }

  /** Reward metrics over the samples with a reward (gold errors left out and counted). */
  private rewardMetrics(batch: RewardBatch & { goldError?: boolean[] }, totals: readonly (number | null)[]): Metrics {
    const out: Metrics = {};
    for (const [k, v] of Object.entries(batch.metrics)) {
      if (k === 'reward' || k === 'reward_std' || k.startsWith('rewards/') || k === 'frac_correct' || k === 'frac_gold_error') out[k] = v;
    }
    const valid = totals.filter((x): x is number => x !== null);
    out['reward'] = mean(valid);
    out['reward_std'] = std(valid);
    out['frac_gold_error'] = batch.metrics['frac_gold_error'] ?? (totals.length - valid.length) / Math.max(1, totals.length);
    out['frac_correct'] = batch.metrics['frac_correct'] ?? 0;
    return out;
  }

  /** Frees the adapter, trainer, SQL workers and (when loaded here) the model. */
  async dispose(): Promise<void> {
    await this.context?.dispose();
    this.context = undefined;
    this.trainer.dispose();
    this.lora.dispose();
    await this.executor.close();
    if (this.ownsModel) this.model.dispose();
  }
}

/**
 * The train/sample mismatch: per token, |training graph log-prob - sampler log-prob| (mean and max) and the
 * importance ratio exp(train - sampler) (min, mean, max), over the included sequences' tokens.
 */

/** The run directory's final adapter path (for callers that only know the config). */
export function finalAdapterPath(runDir: string): string | undefined {
  const p = join(runDir, 'final', ADAPTER_FILE);
  return existsSync(p) ? p : undefined;
}
