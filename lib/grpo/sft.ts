/**
 * Supervised warm-up (SQL-R1's cold start, Arctic-Text2SQL-R1's supervised start): cross-entropy of the gold
 * answers, written as the reward expects them (a fenced ```sql block followed by the end-of-turn token, so that
 * sampling stops after the block), through the same adapter and LoraTrainer as GRPO. The loss is the mean
 * negative log-likelihood over every answer token of the batch, so d loss / d logp = -1/N per token.
 */
import { Sqlr1Error } from '../errors.js';
import type { Model } from '../model/model.js';
import type { AdamW } from '../train/params.js';
import { packedTokens, type LoraTrainer } from '../train/lora-trainer.js';
import { microBatches } from './rollout.js';

/** The answer text the default reward scores as formatted: one ```sql block. */
export function formatAnswer(goldSql: string): string {
  return '```sql\n' + goldSql.trim() + '\n```';
}

/** The end-of-turn token the chat template closes an assistant message with. */
export function endOfTurnId(model: Model): number {
  const tok = model.tokenizer;
  const id = tok.tokenId('<|im_end|>') ?? tok.eotId ?? tok.eosId;
  if (id === null || id === undefined) throw new Sqlr1Error('ERR_TOKENIZER', 'the vocabulary has no end-of-turn token (<|im_end|>, eot or eos) to end answers with');
  return id;
}

/** Token ids of the gold answer: the fenced block, then the end-of-turn token. */
export function answerTokens(model: Model, goldSql: string): number[] {
  return [...model.tokenizer.encode(formatAnswer(goldSql), { addSpecial: false, parseSpecial: false }), endOfTurnId(model)];
}

export interface SftExample {
  prompt: readonly number[];
  answer: readonly number[];
}

export interface SftStepResult {
  /** Mean negative log-likelihood per answer token, before the update. */
  loss: number;
  /** Answer tokens in the batch. */
  tokens: number;
  gradNorm: number;
  seconds: number;
}

/** One supervised step over `batch` (micro-batched to `microBatchTokens` padded tokens), then one AdamW step. */
export async function supervisedStep(trainer: LoraTrainer, optimizer: AdamW, batch: readonly SftExample[], options: {
  lr: number; maxGradNorm: number; microBatchTokens: number; temperature?: number;
}): Promise<SftStepResult> {
  const t0 = performance.now();
  const total = batch.reduce((a, ex) => a + ex.answer.length, 0);
  if (total === 0) throw new Sqlr1Error('ERR_INVALID_ARG', 'supervisedStep: the batch has no answer tokens');
  const sequences = batch.map((ex) => [...ex.prompt, ...ex.answer]);
  const input = (mb: readonly number[]) => ({ sequences: mb.map((i) => sequences[i]!), completionStart: mb.map((i) => batch[i]!.prompt.length) });
  let nll = 0;
  optimizer.zeroGrad();
  for (const mb of microBatches(batch.map((_, i) => i), options.microBatchTokens, (m) => packedTokens(input(m)))) {
    const packed = trainer.pack(input(mb));
    const lp = await trainer.logprobs(packed, { keep: true, temperature: options.temperature ?? 1 });
    const grad = new Float32Array(lp.length);
    for (let k = 0; k < lp.length; k++) {
      if (packed.mask[k] === 0) continue;
      nll -= lp[k]!;
      grad[k] = -1 / total;
    }
    await trainer.backward(grad);
  }
  const gradNorm = optimizer.clipGradNorm(options.maxGradNorm);
  await optimizer.step({ lr: options.lr });
  optimizer.zeroGrad();
  return { loss: nll / total, tokens: total, gradNorm, seconds: (performance.now() - t0) / 1000 };
}
