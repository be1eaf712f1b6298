/**
 * Checkpoints: `checkpoint-<step>/` with adapter.gguf, optimizer.gguf and trainer_state.json, written into a
 * temporary folder and renamed into place, so a process killed mid-save leaves every earlier checkpoint whole.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';
import { Sqlr1Error } from '../errors.js';

export const TRAINER_STATE_FILE = 'trainer_state.json';
export const ADAPTER_FILE = 'adapter.gguf';
export const OPTIMIZER_FILE = 'optimizer.gguf';

/** What a checkpoint holds besides the adapter and the optimizer's moments. */
export interface TrainerState {
  /** GRPO steps done. */
  step: number;
  /** Fractional epochs over the training set done. */
  epoch: number;
  /** Questions taken from the training stream so far (the data cursor). */
  dataCursor: number;
  /** Supervised warm-up steps done (all of them, or the run has not started GRPO). */
  sftStepsDone: number;
  /**
   * Seeds of the run's random streams. Every draw is derived from (seed, step, stream), so these and the step
   * restore them exactly: data order (dataSeed, per epoch), sampling (samplingSeed, per step).
   */
  rng: { seed: number; dataSeed: number; samplingSeed: number };
  /** Best eval execution accuracy so far and its step (null before the first eval). */
  bestMetric: number | null;
  bestStep: number | null;
  /** Lines in metrics.jsonl and completions.jsonl when the checkpoint was taken (resuming truncates to these). */
  metricHistoryLength: number;
  completionHistoryLength: number;
  /** Prompt and completion tokens processed so far (the cumulative `num_tokens` metric). */
  numTokens?: number;
}

const stateSchema = z.object({
  step: z.number().int().nonnegative(),
  epoch: z.number().nonnegative(),
  dataCursor: z.number().int().nonnegative(),
  sftStepsDone: z.number().int().nonnegative(),
  rng: z.object({ seed: z.number().int(), dataSeed: z.number().int(), samplingSeed: z.number().int() }),
  bestMetric: z.number().nullable(),
  bestStep: z.number().int().nullable(),
  metricHistoryLength: z.number().int().nonnegative(),
  completionHistoryLength: z.number().int().nonnegative(),
  numTokens: z.number().int().nonnegative().optional(),
});

/**
 * Writes `dir` atomically: `fill(tmp)` writes the files into a sibling temporary folder, which is then renamed
 * to `dir` (an existing `dir` is moved aside first and removed after).
 */
export async function writeAtomicDir(dir: string, fill: (tmp: string) => Promise<void>): Promise<void> {
  const parent = dirname(dir);
  mkdirSync(parent, { recursive: true });
  const tmp = join(parent, `.${basename(dir)}.tmp-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp);
  try {
    await fill(tmp);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  if (existsSync(dir)) {
    const old = join(parent, `.${basename(dir)}.old-${process.pid}`);
    rmSync(old, { recursive: true, force: true });
    renameSync(dir, old);
    renameSync(tmp, dir);
    rmSync(old, { recursive: true, force: true });
  } else {
    renameSync(tmp, dir);
  }
}

export function writeTrainerState(dir: string, state: TrainerState): void {
  writeFileSync(join(dir, TRAINER_STATE_FILE), JSON.stringify(state, null, 2) + '\n');
}

/** Reads and checks a checkpoint folder's trainer_state.json (ERR_STATE_INVALID when missing or malformed). */
export function readTrainerState(dir: string): TrainerState {
  const path = join(dir, TRAINER_STATE_FILE);
  for (const f of [TRAINER_STATE_FILE, ADAPTER_FILE, OPTIMIZER_FILE]) {
    if (!existsSync(join(dir, f))) throw new Sqlr1Error('ERR_STATE_INVALID', `checkpoint ${dir}: expected ${f}, which is missing`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new Sqlr1Error('ERR_STATE_INVALID', `checkpoint ${path}: not valid JSON (${(e as Error).message})`);
  }
  const parsed = stateSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new Sqlr1Error('ERR_STATE_INVALID', `checkpoint ${path}: ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return parsed.data;
}

/** Checkpoint folders of a run directory, oldest first. */
export function listCheckpoints(runDir: string): { step: number; dir: string }[] {
  if (!existsSync(runDir)) return [];
  return readdirSync(runDir)
    .map((name) => /^checkpoint-(\d+)$/.exec(name))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ step: Number(m[1]), dir: join(runDir, m[0]) }))
    .sort((a, b) => a.step - b.step);
}

export function checkpointDir(runDir: string, step: number): string {
  return join(runDir, `checkpoint-${step}`);
}
