/**
 * A LoRA adapter's parameters and gradients across the ranks of a data-parallel run (through the process group's
 * collectives): rank 0's initial values to every rank, and the gradients summed over ranks between backward and
 * AdamW, so that every rank then takes the same optimizer step.
 */
import type { ParamStore } from '../train/params.js';
import type { ProcessGroup } from './group.js';

/** Every rank's parameters become rank 0's (the stores must hold the same names and shapes, in the same order). */
export async function broadcastParams(store: ParamStore, group: ProcessGroup): Promise<void> {
  const names = store.names();
  const values = names.map((n) => store.get(n));
  const flat = new Float32Array(values.reduce((a, v) => a + v.length, 0));
  let at = 0;
  for (const v of values) { flat.set(v, at); at += v.length; }
  await group.broadcast(flat);
  at = 0;
  for (const [i, n] of names.entries()) {
    const len = values[i]!.length;
    store.set(n, flat.subarray(at, at + len));
    at += len;
  }
}

/**
 * Replaces each gradient with its sum over ranks, in one flat buffer (the loss was normalized by the whole step's
 * counts, so the sum is the gradient of one process training on every rank's sequences). A parameter that got no
 * gradient on any rank keeps none (AdamW then leaves it alone, as in one process); one that got a gradient on
 * some rank only gets the sum on every rank. Resolves to the seconds spent.
 */
export async function allReduceGradients(store: ParamStore, group: ProcessGroup): Promise<number> {
  const t0 = performance.now();
  const names = store.names();
  const grads = names.map((n) => store.grad(n));
  const sizes = names.map((n) => store.shape(n).reduce((a, b) => a * b, 1));
  // One flag per parameter after the values: how many ranks had a gradient for it.
  const total = sizes.reduce((a, b) => a + b, 0);
  const flat = new Float32Array(total + names.length);
  let at = 0;
  for (const [i, g] of grads.entries()) {
    if (g) { flat.set(g, at); flat[total + i] = 1; }
    at += sizes[i]!;
  }
  await group.allReduceSum(flat);
  at = 0;
  for (const [i, n] of names.entries()) {
    if (flat[total + i]! > 0) store.setGrad(n, flat.subarray(at, at + sizes[i]!));
    at += sizes[i]!;
  }
  return (performance.now() - t0) / 1000;
}
