/**
 * LoRA adapters on a model's linear layers: y = W x + (alpha / r) B (A x). A new adapter follows PEFT's
 * initialization (A uniform in +-1/sqrt(in), B zero), so it changes nothing until trained. Files use llama.cpp's
 * adapter format (general.type=adapter, adapter.type=lora, adapter.lora.alpha, blk.N.<name>.weight.lora_a/b),
 * so llama.cpp and node-llama-cpp load them.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { Sqlr1Error } from '../errors.js';
import { callNative, callNativeSync } from '../native/binding.js';
import type { NativeLoraAdapter, NativeLoraInfo } from '../native/types.js';
import { ParamStore } from '../train/params.js';
import { trainBinding } from '../train/native-types.js';
import type { Model } from './model.js';

export const LORA_TARGETS = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];

export interface LoraOptions {
  /** Rank r (default 16, the seed config's). */
  rank?: number;
  /** Scale numerator: updates are scaled by alpha / r (default 32). */
  alpha?: number;
  /** Linear layers to adapt (default all seven). */
  targets?: readonly LoraTarget[];
  /** Seed of A's initialization (default 0). */
  seed?: number;
}

export class LoraAdapter {
  private store: ParamStore | undefined;

  /** @internal */
  constructor(readonly model: Model, /** @internal */ readonly native: NativeLoraAdapter) {}

  /**
   * The adapter's A and B tensors as trainable parameters (names as in the file, e.g.
   * `blk.0.attn_q.weight.lora_a`): gradients from `LoraTrainer.backward` add up there, and `AdamW`, gradient
   * clipping and the optimizer-state file work on it. Values are the adapter's own memory, nothing is copied.
   */
  params(): ParamStore {
    if (!this.store) {
      const native = callNativeSync(() => this.native.params());
      this.store = new ParamStore({}, { binding: trainBinding(this.model.binding), device: this.model.device, native });
    }
    return this.store;
  }

  info(): NativeLoraInfo {
    return callNativeSync(() => this.native.info());
  }

  /** Switched off, contexts run the frozen base: the reference policy, exact and with no extra memory. */
  setEnabled(on: boolean): void {
    callNativeSync(() => this.native.setEnabled(on));
  }

  tensorNames(): string[] {
    return callNativeSync(() => this.native.tensorNames());
  }

  getTensor(name: string): Float32Array {
    return callNativeSync(() => this.native.getTensor(name));
  }

  setTensor(name: string, data: Float32Array): void {
    callNativeSync(() => this.native.setTensor(name, data));
  }

  /** Writes the adapter as GGUF (through a temporary file and a rename). */
  async save(path: string): Promise<void> {
    mkdirSync(dirname(path), { recursive: true });
    await callNative(() => this.native.save(path));
  }

  dispose(): void {
    this.store?.dispose();
    this.store = undefined;
    this.native.dispose();
  }
}

export function createLora(model: Model, options: LoraOptions = {}): LoraAdapter {
  const rank = options.rank ?? 16;
  const alpha = options.alpha ?? 32;
  const targets = options.targets ?? LORA_TARGETS;
  const seed = options.seed ?? 0;
  if (!Number.isInteger(rank) || rank < 1) throw new Sqlr1Error('ERR_INVALID_ARG', `rank must be a positive integer, got ${String(rank)}`);
  if (!(alpha > 0)) throw new Sqlr1Error('ERR_INVALID_ARG', `alpha must be positive, got ${String(alpha)}`);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new Sqlr1Error('ERR_INVALID_ARG', `seed must be a non-negative integer, got ${String(seed)}`);
  for (const t of targets) {
    if (!LORA_TARGETS.includes(t)) throw new Sqlr1Error('ERR_INVALID_ARG', `unknown LoRA target '${String(t)}'; expected ${LORA_TARGETS.join(', ')}`);
  }
  const native = callNativeSync(() => model.binding.createLora(model.nativeModel, { rank, alpha, targets: [...targets], seed }));
  return new LoraAdapter(model, native);
}

/** Loads an adapter file and checks every tensor against the model (ERR_ADAPTER_INVALID otherwise). */
export async function loadLora(model: Model, path: string): Promise<LoraAdapter> {
  const native = await callNative(() => model.binding.loadLora(model.nativeModel, path));
  return new LoraAdapter(model, native);
}
