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
import type { NativeLoraAdapter, NativeLoraInfo, NativeParamStore } from '../native/types.js';
import type { Model } from './model.js';

/**
 * The linear layers an adapter can target, for the type and the default (all). Which names are valid is the
 * addon's rule (lora.cpp's LORA_TARGET_NAME, which maps each to its GGUF tensor): createLora passes the names
 * through and the addon rejects an unknown one with ERR_INVALID_ARG, naming the valid ones.
 */
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
  private paramsHandle: NativeParamStore | undefined;

  /** @internal */
  constructor(readonly model: Model, /** @internal */ readonly native: NativeLoraAdapter) {}

  /**
   * @internal The adapter's tensors as the addon's parameter store: one handle, freed with the adapter. The
   * training layer wraps it (`loraParams(adapter)`), so this layer does not depend on that one.
   */
  nativeParams(): NativeParamStore {
    if (!this.paramsHandle) this.paramsHandle = callNativeSync(() => this.native.params());
    return this.paramsHandle;
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
    if (this.paramsHandle) callNativeSync(() => this.paramsHandle!.dispose());
    this.paramsHandle = undefined;
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
  if (!Array.isArray(targets) || targets.some((x) => typeof x !== 'string')) throw new Sqlr1Error('ERR_INVALID_ARG', `targets must be an array of names, got ${String(targets)}`);
  const native = callNativeSync(() => model.binding.createLora(model.nativeModel, { rank, alpha, targets: [...targets], seed }));
  return new LoraAdapter(model, native);
}

/** Loads an adapter file and checks every tensor against the model (ERR_ADAPTER_INVALID otherwise). */
export async function loadLora(model: Model, path: string): Promise<LoraAdapter> {
  const native = await callNative(() => model.binding.loadLora(model.nativeModel, path));
  return new LoraAdapter(model, native);
}
