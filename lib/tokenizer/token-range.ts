/**
 * The token-id range rule, in one place for the TypeScript layer: an id is an integer in [0, vocabSize).
 * The tokenizer, generation, teacher-forced log-probs and the trainer's batches check ids here, on the numbers
 * the caller passed, before they become an Int32Array (where 2^32 + 5 would silently turn into 5 and 1.5 into
 * 1). The addon checks the int32 ids again before ggml sees them (context.cpp, train.cpp), since it must never
 * index outside the embedding whoever calls it.
 */
import { Sqlr1Error } from '../errors.js';

/** Throws ERR_TOKEN_RANGE unless `id` is an integer in [0, vocabSize); `where` names the id in the message. */
export function checkTokenId(id: unknown, vocabSize: number, where: string): number {
  if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= vocabSize) {
    throw new Sqlr1Error('ERR_TOKEN_RANGE', `${where}: token id ${String(id)} is out of range: expected an integer in [0, ${vocabSize})`);
  }
  return id;
}

/** checkTokenId for every id of a sequence. */
export function checkTokenIds(ids: readonly number[] | Int32Array, vocabSize: number, where: string): void {
  for (const id of ids) checkTokenId(id, vocabSize, where);
}
