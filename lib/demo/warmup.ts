/**
 * The demo's supervised warm-up with a stopping rule on the measured accuracy. Greedy accuracy on the toy task
 * is steep in the number of supervised steps (measured on the CPU: 0.17 after 24 steps, 0.67 after 26, 0.92
 * after 30), and the step where it rises moves with the seed and with the CPU's float rounding, so a fixed step
 * count may land anywhere from 0 to 1. Instead the warm-up evaluates greedy execution accuracy after every step
 * once the loss is low enough for an answer to come out right, and stops at the first step where it reaches
 * `targetAccuracy`: the GRPO phase then starts from a model that is right on some questions and wrong on others,
 * where group-relative advantages have something to work with.
 */
import type { GrpoTrainer, PromptSource } from '../grpo/trainer.js';
import { answerTokens, supervisedStep } from '../grpo/sft.js';
import { AdamW, loraParams } from '../train/params.js';

export interface WarmupUntilOptions {
  /** Most supervised steps; the learning rate decays linearly to 0 over them. */
  maxSteps: number;
  lr: number;
  /** Stop at the first step whose greedy execution accuracy is at least this. */
  targetAccuracy: number;
  /** Accuracy is measured only once the mean answer-token loss is below this (earlier, nothing is right). */
  evalBelowLoss: number;
  prompts: PromptSource;
  onStep?: (step: number, loss: number, accuracy: number | undefined) => void;
}

export interface WarmupUntilResult {
  steps: number;
  loss: number;
  /** Greedy execution accuracy at the step the warm-up stopped (measured, or 0 when never measured). */
  accuracy: number;
  /** Whether the target was reached before maxSteps. */
  reached: boolean;
}

/**
 * Supervised steps on the whole training set (one batch per step) at a linearly decaying learning rate until
 * greedy accuracy reaches the target; the optimizer moments are reset afterwards, so GRPO starts fresh.
 */
export async function warmupUntil(trainer: GrpoTrainer, data: readonly { question: string; dbPath: string; goldSql: string }[],
  options: WarmupUntilOptions): Promise<WarmupUntilResult> {
  const c = trainer.config;
  const batch = data.map((ex) => ({
    prompt: options.prompts.tokens(ex).slice(-c.maxPromptLength), answer: answerTokens(trainer.model, ex.goldSql),
  }));
  const store = loraParams(trainer.lora);
  const opt = new AdamW(store, { lr: options.lr, weightDecay: 0 });
  let loss = NaN;
  let accuracy = 0;
  let steps = 0;
  let reached = false;
  for (let s = 0; s < options.maxSteps && !reached; s++) {
    const r = await supervisedStep(trainer.trainer, opt, batch, {
      lr: options.lr * (1 - s / options.maxSteps), maxGradNorm: c.maxGradNorm, microBatchTokens: c.microBatchTokens,
    });
    loss = r.loss;
    steps = s + 1;
    let measured: number | undefined;
    if (r.loss < options.evalBelowLoss) {
      measured = accuracy = (await trainer.evaluate())['eval/execution_accuracy'] ?? 0;
      reached = measured >= options.targetAccuracy;
    }
    options.onStep?.(steps, loss, measured);
  }
  for (const name of store.names()) {
    const n = store.get(name).length;
    store.setMoments(name, { m: new Float32Array(n), v: new Float32Array(n) });
  }
  store.zeroGrad();
  return { steps, loss, accuracy, reached };
}
