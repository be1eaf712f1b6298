/**
 * The CPU thread count ggml uses when an option leaves it open: SQLR1_THREADS when set (for machines shared by
 * several processes, such as a test run with many files at a time), else 0, which the addon reads as all cores.
 */
import { Sqlr1Error } from '../errors.js';

export function defaultThreads(): number {
  const v = process.env.SQLR1_THREADS;
  if (v === undefined || v === '') return 0;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 1024) throw new Sqlr1Error('ERR_CONFIG', `SQLR1_THREADS must be an integer in [1, 1024], got ${JSON.stringify(v)}`);
  return n;
}
