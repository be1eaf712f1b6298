import type { Command } from 'commander';
import { createLora, generate, loadModel, teacherForcedLogprobs, type Model } from '../../model/index.js';
import { parseChoice, parseIntArg, parseIntList, printJson } from '../util.js';

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
export async function benchGenerate(model: Model, batch: number, promptTokens: number, newTokens: number, seed = 1): Promise<GenerateBenchRow> {
  const ctx = model.createContext({ nSeq: batch, nCtx: promptTokens + newTokens, nBatch: Math.max(512, promptTokens) });
  try {
    const prompt = randomPrompt(promptTokens, model.info.nVocab, seed);
    // Warm-up: compiles kernels, sizes the compute buffers and captures CUDA graphs.
    await generate(model, { prompts: [prompt], samplesPerPrompt: batch, maxNewTokens: 4, stopAtEog: false, temperature: 0.7, context: ctx });
    const t0 = performance.now();
    const { stats } = await generate(model, { prompts: [prompt], samplesPerPrompt: batch, maxNewTokens: newTokens, stopAtEog: false,
      temperature: 0.7, seed, context: ctx });
    const total = (performance.now() - t0) / 1000;
    const dev = model.device === 'cuda' ? model.binding.cudaDevices()[0] : undefined;
    return {
      ...(dev ? { gpuUsedMiB: (dev.totalBytes - dev.freeBytes) / 2 ** 20 } : {}),
      batch, promptTokens, newTokens, prefillS: stats.prefillMs / 1000, decodeS: stats.decodeMs / 1000, totalS: total,
      decodeTokPerS: (batch * newTokens) / (stats.decodeMs / 1000),
    };
  } finally {
    await ctx.dispose();
  }
}

export interface StepBenchRow {
  name: string;
  seconds: number;
  gpuUsedMiB?: number;
}

/**
 * The GRPO training step's passes over N sequences of `prompt` + `completion` tokens, LoRA on all seven linear
 * layers: the reference forward (adapter off) and the policy forward (adapter on), each giving per-token
 * log-probs. The backward pass and the optimizer step are not measured yet (the training core is in progress).
 */
export async function benchStep(model: Model, n: number, promptTokens: number, completionTokens: number, rank: number, alpha: number): Promise<StepBenchRow[]> {
  const L = promptTokens + completionTokens;
  const sequences = Array.from({ length: n }, (_, i) => randomPrompt(L, model.info.nVocab, 100 + i));
  const completionStart = sequences.map(() => promptTokens);
  const ctx = model.createContext({ nSeq: n, nCtx: L, nBatch: n * L });
  const lora = createLora(model, { rank, alpha });
  const rows: StepBenchRow[] = [];
  const mem = () => (model.device === 'cuda' ? model.binding.cudaDevices()[0] : undefined);
  try {
    for (const [name, on] of [['reference forward (adapter off)', false], ['policy forward (adapter on, no grad)', true]] as const) {
      lora.setEnabled(on);
      await teacherForcedLogprobs(model, { sequences, completionStart, temperature: 0.7, lora, context: ctx });  // warm-up
      const t0 = performance.now();
      await teacherForcedLogprobs(model, { sequences, completionStart, temperature: 0.7, lora, context: ctx });
      const d = mem();
      rows.push({ name, seconds: (performance.now() - t0) / 1000, ...(d ? { gpuUsedMiB: (d.totalBytes - d.freeBytes) / 2 ** 20 } : {}) });
    }
  } finally {
    await ctx.dispose();
    lora.dispose();
  }
  return rows;
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

export function register(program: Command): void {
  const bench = program.command('bench').description('throughput benchmarks (GPU figures are the ones that count)');
  registerStep(bench);
  bench
    .command('generate')
    .description('batched sampling from one shared prompt, like llama-batched-bench -pps')
    .requiredOption('--model <file>', 'GGUF model')
    .option('--device <device>', 'auto | cpu | cuda', parseChoice('--device', ['auto', 'cpu', 'cuda'] as const), 'auto')
    .option('--prompt-tokens <n>', 'shared prompt length', parseIntArg('--prompt-tokens', 1), 512)
    .option('--new-tokens <n>', 'tokens generated per sequence', parseIntArg('--new-tokens', 1), 256)
    .option('--batch <list>', 'comma-separated batch sizes', parseIntList('--batch'), [1, 8, 32])
    .option('--json', 'machine-readable output')
    .action(async (o: { model: string; device: 'auto' | 'cpu' | 'cuda'; promptTokens: number; newTokens: number; batch: number[]; json?: boolean }) => {
      const report = await withModel(o.model, o.device, async (model) => {
        const rows: GenerateBenchRow[] = [];
        for (const b of o.batch) rows.push(await benchGenerate(model, b, o.promptTokens, o.newTokens));
        return rows;
      });
      if (o.json) {
        printJson(report);
        return;
      }
      const { rows } = report;
      process.stdout.write(`device ${report.device}${report.gpu ? ` (${report.gpu})` : ''}, weights ${report.weightType}\n`);
      process.stdout.write('| B | prompt | new | prefill s | decode s | total s | decode tok/s | GPU MiB in use |\n|---|---|---|---|---|---|---|---|\n');
      for (const r of rows) {
        process.stdout.write(`| ${r.batch} | ${r.promptTokens} | ${r.newTokens} | ${r.prefillS.toFixed(3)} | ${r.decodeS.toFixed(3)} | ${r.totalS.toFixed(3)} | ` +
          `${r.decodeTokPerS.toFixed(1)} | ${r.gpuUsedMiB?.toFixed(0) ?? '-'} |\n`);
      }
    });
}

export function registerStep(bench: Command): void {
  bench
    .command('step')
    .description('the passes of one GRPO training step (LoRA on all linear layers): reference and policy forward')
    .requiredOption('--model <file>', 'GGUF model')
    .option('--device <device>', 'auto | cpu | cuda', parseChoice('--device', ['auto', 'cpu', 'cuda'] as const), 'auto')
    .option('--sequences <n>', 'sequences per step', parseIntArg('--sequences', 1), 8)
    .option('--prompt-tokens <n>', 'prompt tokens per sequence', parseIntArg('--prompt-tokens', 1), 512)
    .option('--completion-tokens <n>', 'completion tokens per sequence', parseIntArg('--completion-tokens', 1), 256)
    .option('--rank <r>', 'LoRA rank', parseIntArg('--rank', 1), 16)
    .option('--alpha <a>', 'LoRA alpha', parseIntArg('--alpha', 1), 32)
    .option('--json', 'machine-readable output')
    .action(async (o: { model: string; device: 'auto' | 'cpu' | 'cuda'; sequences: number; promptTokens: number; completionTokens: number;
      rank: number; alpha: number; json?: boolean }) => {
      const report = await withModel(o.model, o.device, (model) => benchStep(model, o.sequences, o.promptTokens, o.completionTokens, o.rank, o.alpha));
      if (o.json) {
        printJson({ ...report, sequences: o.sequences, promptTokens: o.promptTokens, completionTokens: o.completionTokens, rank: o.rank, alpha: o.alpha });
        return;
      }
      const { rows } = report;
      process.stdout.write(`device ${report.device}${report.gpu ? ` (${report.gpu})` : ''}, weights ${report.weightType}, ` +
        `${o.sequences} x (${o.promptTokens} + ${o.completionTokens}) tokens, LoRA r=${o.rank} alpha=${o.alpha} on q,k,v,o,gate,up,down\n`);
      process.stdout.write('| pass | seconds | GPU MiB in use |\n|---|---|---|\n');
      for (const r of rows) process.stdout.write(`| ${r.name} | ${r.seconds.toFixed(3)} | ${r.gpuUsedMiB?.toFixed(0) ?? '-'} |\n`);
    });
}
