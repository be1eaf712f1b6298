import type { Command } from 'commander';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GRPO_DEFAULTS } from '../../grpo/config.js';
import { GrpoTrainer } from '../../grpo/trainer.js';
import { createToyDatabase, TOY_EXAMPLES } from '../../demo/toy-db.js';
import { createLora, generate, loadModel, type Model } from '../../model/index.js';
import { AdamW, LoraTrainer, Tensor, backward, grpoLoss, type LoraTrainerOptions, type TrainCompute } from '../../train/index.js';
import { parseChoice, parseFloatArg, parseIntArg, parseIntList, printJson } from '../util.js';

export interface GenerateBenchRow {
  batch: number;
  promptTokens: number;
  newTokens: number;
  prefillS: number;
  decodeS: number;
  totalS: number;
  decodeTokPerS: number;
  /** Device memory in use (total - free) right after the run, context still alive; CUDA only. */
  gpuUsedMiB?: number;
}

/** Deterministic pseudo-random prompt ids below `vocab` (the bench measures speed, not text). */
function randomPrompt(n: number, vocab: number, seed: number): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % Math.min(vocab, 150000);
  });
}

/**
 * One shared prompt of `promptTokens` sampled B times for `newTokens` each (EOG ignored): the shape of
 * `llama-batched-bench -pps`. Times the whole call: prefill, prefix copy and every decode step.
 */
/**
 * One batched generation from a shared prompt, timed after a short warm-up. With `loraRank`, an adapter of that
 * rank (alpha 2r) on all seven linear layers is applied, as in GRPO rollouts; `packAdapter` false applies it
 * one product pair per target (ContextOptions.packAdapter), for comparison.
 */
export async function benchGenerate(model: Model, batch: number, promptTokens: number, newTokens: number, seed = 1, loraRank?: number,
  packAdapter = true): Promise<GenerateBenchRow> {
  const ctx = model.createContext({ nSeq: batch, nCtx: promptTokens + newTokens, nBatch: Math.max(512, promptTokens), packAdapter });
  const lora = loraRank ? createLora(model, { rank: loraRank, alpha: 2 * loraRank }) : null;
  try {
    const prompt = randomPrompt(promptTokens, model.info.nVocab, seed);
    // Warm-up: loads the kernels and sizes the compute buffers.
    await generate(model, { prompts: [prompt], samplesPerPrompt: batch, maxNewTokens: 4, stopAtEog: false, temperature: 0.7, context: ctx, lora });
    const t0 = performance.now();
    const { stats } = await generate(model, { prompts: [prompt], samplesPerPrompt: batch, maxNewTokens: newTokens, stopAtEog: false,
      temperature: 0.7, seed, context: ctx, lora });
    const total = (performance.now() - t0) / 1000;
    const dev = model.device === 'cuda' ? model.binding.cudaDevices()[0] : undefined;
    return {
      ...(dev ? { gpuUsedMiB: (dev.totalBytes - dev.freeBytes) / 2 ** 20 } : {}),
      batch, promptTokens, newTokens, prefillS: stats.prefillMs / 1000, decodeS: stats.decodeMs / 1000, totalS: total,
      decodeTokPerS: (batch * newTokens) / (stats.decodeMs / 1000),
    };
  } finally {
    await ctx.dispose();
    lora?.dispose();
  }
}

export interface StepBenchRow {
  name: string;
  /** Median over the measured steps. */
  seconds: number;
  /** Device memory in use (total - free) after this pass of the last step; CUDA only. */
  gpuUsedMiB?: number;
}

export interface StepBenchResult {
  compute: TrainCompute;
  steps: number;
  rows: StepBenchRow[];
  /** Policy forward + loss + backward + clip + AdamW, per step (median). */
  policySeconds: number;
  /** The most device memory in use after any pass of any step (ggml keeps its pools, so this is the peak). */
  peakGpuMiB?: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/**
 * The trainer's diagnostics from the environment, read here once and passed down as options:
 * SQLR1_TRAIN_SYNC=1 (a wait after each graph and kernel), SQLR1_TRAIN_PROFILE=1 or 2 (timings; 2 node by
 * node), SQLR1_FUSED_KERNELS=0 (the written-out graphs instead of the fused CUDA kernels).
 */
export function trainDiagnostics(env: NodeJS.ProcessEnv = process.env): Pick<LoraTrainerOptions, 'sync' | 'profile' | 'fusedKernels'> {
  const profile = env.SQLR1_TRAIN_PROFILE;
  return {
    sync: env.SQLR1_TRAIN_SYNC === '1',
    profile: profile === '2' ? 2 : profile && profile !== '0' ? 1 : 0,
    fusedKernels: env.SQLR1_FUSED_KERNELS !== '0',
  };
}

/**
 * One GRPO training step over N sequences of `prompt` + `completion` tokens, LoRA on all seven linear layers,
 * pass by pass: the reference forward (adapter off, no activations kept), the policy forward (activations
 * kept), the GRPO loss and its gradient w.r.t. the log-probs (clip 0.2, KL 0.05), the backward pass into the
 * adapter, gradient-norm clipping and the AdamW step. One warm-up step, then `steps` measured ones.
 */
export async function benchStep(model: Model, n: number, promptTokens: number, completionTokens: number, rank: number, alpha: number,
  options: { compute?: TrainCompute; steps?: number } = {}): Promise<StepBenchResult> {
  const L = promptTokens + completionTokens;
  const sequences = Array.from({ length: n }, (_, i) => randomPrompt(L, model.info.nVocab, 100 + i));
  const lora = createLora(model, { rank, alpha });
  const trainer = await LoraTrainer.create(model, lora, { ...(options.compute ? { compute: options.compute } : {}), maxTokens: Math.max(16384, n * L), ...trainDiagnostics() });
  const opt = new AdamW(trainer.params, { lr: 5e-6, weightDecay: 0.01, maxGradNorm: 1.0 });
  const batch = trainer.pack({ sequences, completionStart: sequences.map(() => promptTokens) });
  const C = batch.maxCompletion;
  const advantages = Tensor.constant(Float32Array.from({ length: n }, (_, i) => (i % 2 ? -1 : 1) * (0.5 + i / n)), [n]);
  const mask = Tensor.constant(batch.mask, [n, C]);
  const mem = () => {
    const d = model.device === 'cuda' ? model.binding.cudaDevices()[0] : undefined;
    return d ? (d.totalBytes - d.freeBytes) / 2 ** 20 : undefined;
  };
  const names = ['reference forward (adapter off)', 'policy forward (activations kept)', 'GRPO loss + d loss / d logp',
    'backward into the adapter', 'clip grad norm + AdamW step'] as const;
  const times: number[][] = names.map(() => []);
  const used: (number | undefined)[] = names.map(() => undefined);
  let peak: number | undefined;
  const steps = options.steps ?? 3;
  try {
    for (let s = 0; s <= steps; s++) {
      const lap: number[] = [];
      let t0 = performance.now();
      const mark = (k: number) => {
        const t1 = performance.now();
        lap.push((t1 - t0) / 1000);
        t0 = t1;
        used[k] = mem();
        if (used[k] !== undefined) peak = Math.max(peak ?? 0, used[k]!);
      };
      const ref = await trainer.logprobs(batch, { adapter: false, temperature: 0.7 });
      mark(0);
      const lp = await trainer.logprobs(batch, { keep: true, temperature: 0.7 });
      mark(1);
      const logp = Tensor.constant(lp, [n, C], { requiresGrad: true });
      const loss = grpoLoss({ logp, oldLogp: Tensor.constant(lp, [n, C]), refLogp: Tensor.constant(ref, [n, C]), advantages, mask, beta: 0.05 });
      const g = (await backward(loss.loss)).grads.get(logp)!;
      mark(2);
      await trainer.backward(g);
      mark(3);
      await opt.step();
      opt.zeroGrad();
      mark(4);
      if (s > 0) lap.forEach((x, k) => times[k]!.push(x));  // step 0 warms up (kernels, buffers)
    }
  } finally {
    trainer.dispose();
    lora.dispose();
  }
  const rows = names.map((name, k) => ({ name, seconds: median(times[k]!), ...(used[k] !== undefined ? { gpuUsedMiB: used[k] } : {}) }));
  const perStep = times[1]!.map((_, i) => times[1]![i]! + times[2]![i]! + times[3]![i]! + times[4]![i]!);
  return { compute: trainer.compute, steps, rows, policySeconds: median(perStep), ...(peak !== undefined ? { peakGpuMiB: peak } : {}) };
}

/** Loads the model, runs `work`, frees the model, and returns the rows with the device facts. */
async function withModel<R>(path: string, device: 'auto' | 'cpu' | 'cuda', work: (m: Model) => Promise<R>) {
  const model = await loadModel(path, { device });
  try {
    const rows = await work(model);
    const gpu = model.device === 'cuda' ? model.binding.cudaDevices()[0]?.name : undefined;
    return { model: path, device: model.device, gpu, weightType: model.info.weightType, rows };
  } finally {
    model.dispose();
  }
}

/** A `bench` subcommand with the options every benchmark takes (model, device, --json). */
function benchCommand(bench: Command, name: string, description: string): Command {
  return bench
    .command(name)
    .description(description)
    .requiredOption('--model <file>', 'GGUF model')
    .option('--device <device>', 'auto | cpu | cuda', parseChoice('--device', ['auto', 'cpu', 'cuda'] as const), 'auto')
    .option('--json', 'machine-readable output');
}

export interface GrpoBenchResult {
  prompts: number;
  generations: number;
  promptTokens: number;
  completionTokens: number;
  steps: number;
  /** Medians over the measured steps, seconds: the whole step and each part (metrics time/*). */
  stepSeconds: number;
  parts: { rollout: number; reward: number; reference: number; policy: number; optimizer: number };
  /** Prompt + completion tokens per second of a whole step (median). */
  tokensPerSecond: number;
  /**
   * The most device memory in use between steps; CUDA only. Buffers a step frees before it ends (rollout contexts)
   * are not in it: sample the device from outside (nvidia-smi, as scripts/gpu-bench.sh does) for the true peak.
   */
  peakGpuMiB?: number;
}

/**
 * Whole GRPO steps through GrpoTrainer: P prompts of exactly `promptTokens` tokens (pseudo-random ids) x K
 * completions forced to `completionTokens` tokens (end-of-generation and stop strings ignored), rewards on the
 * toy SQLite database in the SQL workers, the reference pass (beta > 0), policy forward and backward, clipping
 * and AdamW. A seeded noise reward keeps every group's rewards distinct, so every sequence takes part in the
 * update as it would in training with a signal. One warm-up step, then `steps` measured ones.
 */
export async function benchGrpo(model: Model, o: { prompts: number; generations: number; promptTokens: number; completionTokens: number;
  rank: number; alpha: number; beta: number; steps: number; microBatchTokens: number; sharePrompts?: boolean }): Promise<GrpoBenchResult> {
  const dir = mkdtempSync(join(tmpdir(), 'sqlr1-bench-grpo-'));
  const dbPath = createToyDatabase(join(dir, 'company.sqlite'));
  const data = Array.from({ length: o.prompts }, (_, i) => ({ ...TOY_EXAMPLES[i % TOY_EXAMPLES.length]!, question: `q${i}`, dbPath, goldSql: TOY_EXAMPLES[i % TOY_EXAMPLES.length]!.query }));
  const promptIds = new Map(data.map((d, i) => [d.question, randomPrompt(o.promptTokens, model.info.nVocab, 1000 + i)]));
  let draws = 0;
  const trainer = await GrpoTrainer.create({
    model, trainDataset: data, outputDir: join(dir, 'run'), promptsPerStep: o.prompts, numGenerations: o.generations,
    maxPromptLength: o.promptTokens, maxCompletionLength: o.completionTokens, lora: { rank: o.rank, alpha: o.alpha }, beta: o.beta,
    learningRate: 5e-6, lrSchedulerType: 'constant', maxSteps: o.steps + 1, microBatchTokens: o.microBatchTokens, sharePrompts: o.sharePrompts ?? true, temperature: 0.7,
    prompts: { tokens: (ex) => promptIds.get(ex.question)! }, forceFullLength: true, progress: false, report: false, log: () => undefined,
    rewardFunctions: [{ name: 'bench_noise', fn: () => ((Math.imul(++draws, 2654435761) >>> 0) / 2 ** 32) }],
  });
  const mem = () => {
    const d = model.device === 'cuda' ? model.binding.cudaDevices()[0] : undefined;
    return d ? (d.totalBytes - d.freeBytes) / 2 ** 20 : undefined;
  };
  const rows: Record<string, number>[] = [];
  let peak: number | undefined;
  try {
    for (let s = 0; s <= o.steps; s++) {
      const { metrics } = await trainer.trainStep();
      const used = mem();
      if (used !== undefined) peak = Math.max(peak ?? 0, used);
      if (s > 0) rows.push(metrics);  // step 0 warms up (kernels, buffers, CUDA graphs)
    }
  } finally {
    await trainer.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
  const med = (k: string) => median(rows.map((r) => r[k] ?? 0));
  return {
    prompts: o.prompts, generations: o.generations, promptTokens: o.promptTokens, completionTokens: o.completionTokens, steps: o.steps,
    stepSeconds: med('step_time'),
    parts: { rollout: med('time/rollout'), reward: med('time/reward'), reference: med('time/reference'), policy: med('time/policy'), optimizer: med('time/optimizer') },
    tokensPerSecond: med('tokens_per_second'), ...(peak !== undefined ? { peakGpuMiB: peak } : {}),
  };
}

/** The LoRA shape and step count that `bench step` and `bench grpo` share. */
function trainingOptions(c: Command): Command {
  return c
    .option('--rank <r>', 'LoRA rank', parseIntArg('--rank', 1), 16)
    .option('--alpha <a>', 'LoRA alpha', parseIntArg('--alpha', 1), 32)
    .option('--steps <n>', 'measured steps after one warm-up step (medians are reported)', parseIntArg('--steps', 1), 3);
}

function registerGrpo(bench: Command): void {
  trainingOptions(benchCommand(bench, 'grpo', 'whole GRPO steps: rollouts (forced to full length), rewards on SQLite, reference, policy, backward, AdamW'))
    .option('--prompts <n>', 'prompts per step', parseIntArg('--prompts', 1), 8)
    .option('--generations <n>', 'completions per prompt', parseIntArg('--generations', 1), 8)
    .option('--prompt-tokens <n>', 'prompt tokens', parseIntArg('--prompt-tokens', 1), 512)
    .option('--completion-tokens <n>', 'completion tokens (every completion runs to this length)', parseIntArg('--completion-tokens', 1), 256)
    .option('--beta <b>', 'KL coefficient (0: no reference pass)', parseFloatArg('--beta', 0), 0.05)
    .option('--micro-batch-tokens <n>', 'most padded tokens per training micro-batch (the trainer\'s default)', parseIntArg('--micro-batch-tokens', 2),
      GRPO_DEFAULTS.microBatchTokens)
    .option('--no-share-prompts', 'one row per completion in the reference and policy passes (share_prompts: false)')
    .action(async (o: { model: string; device: 'auto' | 'cpu' | 'cuda'; prompts: number; generations: number; promptTokens: number;
      completionTokens: number; rank: number; alpha: number; beta: number; microBatchTokens: number; sharePrompts: boolean; steps: number; json?: boolean }) => {
      const report = await withModel(o.model, o.device, (model) => benchGrpo(model, o));
      if (o.json) {
        printJson(report);
        return;
      }
      const r = report.rows;
      process.stdout.write(`device ${report.device}${report.gpu ? ` (${report.gpu})` : ''}, weights ${report.weightType}, ` +
        `${r.prompts} x ${r.generations} completions, ${r.promptTokens} + ${r.completionTokens} tokens, LoRA r=${o.rank} alpha=${o.alpha}, ` +
        `beta ${o.beta}, micro-batches of at most ${o.microBatchTokens} tokens, prompts ${o.sharePrompts ? 'shared' : 'one per completion'}, median of ${r.steps} steps\n`);
      process.stdout.write('| part | seconds |\n|---|---|\n');
      for (const [k, v] of Object.entries(r.parts)) process.stdout.write(`| ${k} | ${v.toFixed(3)} |\n`);
      process.stdout.write(`| whole step | ${r.stepSeconds.toFixed(3)} |\n`);
      process.stdout.write(`tokens/s ${r.tokensPerSecond.toFixed(0)}; GPU MiB in use between steps ${r.peakGpuMiB?.toFixed(0) ?? '-'} (not the peak within a step)\n`);
    });
}

export function register(program: Command): void {
  const bench = program.command('bench').description('throughput benchmarks (GPU figures are the ones that count)');
  registerStep(bench);
  registerGrpo(bench);
  benchCommand(bench, 'generate', 'batched sampling from one shared prompt, like llama-batched-bench -pps')
    .option('--prompt-tokens <n>', 'shared prompt length', parseIntArg('--prompt-tokens', 1), 512)
    .option('--new-tokens <n>', 'tokens generated per sequence', parseIntArg('--new-tokens', 1), 256)
    .option('--batch <list>', 'comma-separated batch sizes', parseIntList('--batch'), [1, 8, 32])
    .option('--lora-rank <r>', 'apply a LoRA adapter of this rank (alpha 2r) on all seven linear layers, as GRPO rollouts do', parseIntArg('--lora-rank', 1))
    .option('--no-pack-adapter', 'with --lora-rank: one adapter product pair per target instead of one per group of targets (for comparison)')
    .action(async (o: { model: string; device: 'auto' | 'cpu' | 'cuda'; promptTokens: number; newTokens: number; batch: number[]; loraRank?: number; packAdapter: boolean; json?: boolean }) => {
      const report = await withModel(o.model, o.device, async (model) => {
        const rows: GenerateBenchRow[] = [];
        for (const b of o.batch) rows.push(await benchGenerate(model, b, o.promptTokens, o.newTokens, 1, o.loraRank, o.packAdapter));
        return rows;
      });
      if (o.json) {
        printJson(report);
        return;
      }
      const { rows } = report;
      process.stdout.write(`device ${report.device}${report.gpu ? ` (${report.gpu})` : ''}, weights ${report.weightType}` +
        `${o.loraRank ? `, LoRA r=${o.loraRank} on all seven linear layers${o.packAdapter ? '' : ', one product pair per target'}` : ''}\n`);
      process.stdout.write('| B | prompt | new | prefill s | decode s | total s | decode tok/s | GPU MiB in use |\n|---|---|---|---|---|---|---|---|\n');
      for (const r of rows) {
        process.stdout.write(`| ${r.batch} | ${r.promptTokens} | ${r.newTokens} | ${r.prefillS.toFixed(3)} | ${r.decodeS.toFixed(3)} | ${r.totalS.toFixed(3)} | ` +
          `${r.decodeTokPerS.toFixed(1)} | ${r.gpuUsedMiB?.toFixed(0) ?? '-'} |\n`);
      }
    });
}

function registerStep(bench: Command): void {
  trainingOptions(benchCommand(bench, 'step', 'one GRPO training step (LoRA on all linear layers), pass by pass: reference forward, policy forward, loss, backward, AdamW'))
    .option('--sequences <n>', 'sequences per step', parseIntArg('--sequences', 1), 8)
    .option('--prompt-tokens <n>', 'prompt tokens per sequence', parseIntArg('--prompt-tokens', 1), 512)
    .option('--completion-tokens <n>', 'completion tokens per sequence', parseIntArg('--completion-tokens', 1), 256)
    .option('--compute <type>', 'type frozen weights are converted to for products: f32 | bf16 (default bf16 on CUDA, f32 on the CPU)',
      parseChoice('--compute', ['f32', 'bf16'] as const))
    .action(async (o: { model: string; device: 'auto' | 'cpu' | 'cuda'; sequences: number; promptTokens: number; completionTokens: number;
      rank: number; alpha: number; compute?: TrainCompute; steps: number; json?: boolean }) => {
      const report = await withModel(o.model, o.device, (model) =>
        benchStep(model, o.sequences, o.promptTokens, o.completionTokens, o.rank, o.alpha, { ...(o.compute ? { compute: o.compute } : {}), steps: o.steps }));
      if (o.json) {
        printJson({ ...report, sequences: o.sequences, promptTokens: o.promptTokens, completionTokens: o.completionTokens, rank: o.rank, alpha: o.alpha });
        return;
      }
      const r = report.rows;
      process.stdout.write(`device ${report.device}${report.gpu ? ` (${report.gpu})` : ''}, weights ${report.weightType}, compute ${r.compute}, ` +
        `${o.sequences} x (${o.promptTokens} + ${o.completionTokens}) tokens, LoRA r=${o.rank} alpha=${o.alpha} on q,k,v,o,gate,up,down, ` +
        `median of ${r.steps} steps\n`);
      process.stdout.write('| pass | seconds | GPU MiB in use after |\n|---|---|---|\n');
      for (const row of r.rows) process.stdout.write(`| ${row.name} | ${row.seconds.toFixed(3)} | ${row.gpuUsedMiB?.toFixed(0) ?? '-'} |\n`);
      process.stdout.write(`| policy forward + loss + backward + step | ${r.policySeconds.toFixed(3)} | peak ${r.peakGpuMiB?.toFixed(0) ?? '-'} |\n`);
    });
}
