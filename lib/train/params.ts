/**
 * Trainable parameters that live in native memory on one device (`ParamStore`), with their gradient
 * accumulators and AdamW moments, and the `AdamW` optimizer that owns the schedule (step count, learning rate,
 * gradient clipping). The update itself is ggml's `opt_step_adamw`, run on the store's device.
 *
 * One training step reads as: `await backward(loss)` (gradients add up in the store) -> `clipGradNorm` ->
 * `await opt.step()` -> `zeroGrad()`.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { Sqlr1Error } from '../errors.js';
import { callNative, callNativeSync, getBinding, type Device, type DeviceRequest } from '../native/binding.js';
import { defaultThreads } from '../native/threads.js';
import type { LoraAdapter } from '../model/lora.js';
import type { NativeAdamwOptions, NativeBinding, NativeGraphRequest, NativeGraphResult, NativeOptimizerState, NativeParamStore, NativeParamStoreInfo } from '../native/types.js';
import { Tensor, type Shape } from './tensor.js';

function invalid(msg: string): never {
  throw new Sqlr1Error('ERR_INVALID_ARG', msg);
}

function checkName(name: unknown, what: string): string {
  if (typeof name !== 'string' || name.length === 0) invalid(`${what}: the parameter name must be a non-empty string`);
  return name;
}

export interface ParamStoreOptions {
  /** Where the parameters live and graphs using them run: 'cpu' (default), 'cuda' or 'auto'. Pass the model's device. */
  device?: DeviceRequest;
  /** CPU threads for graphs run on this store (default: SQLR1_THREADS, else all cores). */
  threads?: number;
  /** Receives informational messages (the 'auto' device choice); default: stderr unless SQLR1_QUIET=1. */
  log?: (msg: string) => void;
}

/** One AdamW step's hyperparameters (the native layout; the step count is 1-based, for bias correction). */
export type AdamwStepOptions = NativeAdamwOptions;

/** Named F32 tensors on a device, with gradients and AdamW moments. Shapes are outermost first. */
export class ParamStore {
  readonly device: Device;
  /** @internal */ readonly binding: NativeBinding;
  private native: NativeParamStore | undefined;
  /** A store over another object's memory (an adapter's): that object frees it. */
  private readonly borrowed: boolean;

  constructor(options: ParamStoreOptions = {}, /** @internal */ borrowed?: { binding: NativeBinding; device: Device; native: NativeParamStore }) {
    if (borrowed) {
      this.binding = borrowed.binding;
      this.device = borrowed.device;
      this.native = borrowed.native;
      this.borrowed = true;
      return;
    }
    this.borrowed = false;
    const threads = options.threads ?? defaultThreads();
    if (!Number.isInteger(threads) || threads < 0 || threads > 1024) invalid(`ParamStore: threads must be an integer in [0, 1024], got ${String(threads)}`);
    const { binding, device } = getBinding(options.device ?? 'cpu', options.log);
    this.binding = binding;
    this.device = device;
    this.native = callNativeSync(() => new this.binding.ParamStore({ device, threads }));
  }

  /** @internal The native handle (ERR_DISPOSED after dispose). */
  handle(): NativeParamStore {
    if (!this.native) throw new Sqlr1Error('ERR_DISPOSED', 'the parameter store was disposed');
    return this.native;
  }

  /** Adds a parameter (zeros when `data` is omitted) and returns a tensor that refers to it. */
  add(name: string, shape: Shape, data?: Float32Array | ArrayLike<number>): Tensor {
    checkName(name, 'ParamStore.add');
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 1) || shape.length > 4) {
      invalid(`ParamStore.add('${name}'): shape must hold 0 to 4 positive integers, got ${JSON.stringify(shape)}`);
    }
    const n = shape.reduce((a, b) => a * b, 1);
    const values = data === undefined ? new Float32Array(n) : Float32Array.from(data);
    if (values.length !== n) invalid(`ParamStore.add('${name}'): shape [${shape.join(', ')}] has ${n} elements but data has ${values.length}`);
    callNativeSync(() => this.handle().add(name, [...shape], values));
    return Tensor.param(this, name, [...shape]);
  }

  /** A tensor that refers to parameter `name`. */
  param(name: string): Tensor {
    return Tensor.param(this, checkName(name, 'ParamStore.param'), this.shape(name));
  }

  has(name: string): boolean {
    return this.names().includes(name);
  }

  names(): string[] {
    return callNativeSync(() => this.handle().names());
  }

  shape(name: string): number[] {
    return callNativeSync(() => this.handle().shape(checkName(name, 'ParamStore.shape')));
  }

  /** The parameter's values (a copy). */
  get(name: string): Float32Array {
    return callNativeSync(() => this.handle().get(checkName(name, 'ParamStore.get')));
  }

  set(name: string, data: Float32Array | ArrayLike<number>): void {
    checkName(name, 'ParamStore.set');
    callNativeSync(() => this.handle().set(name, Float32Array.from(data)));
  }

  /** The gradient accumulated since the last zeroGrad, or undefined when none arrived. */
  grad(name: string): Float32Array | undefined {
    return callNativeSync(() => this.handle().grad(checkName(name, 'ParamStore.grad'))) ?? undefined;
  }

  /** Replaces the accumulated gradient of `name` (a data-parallel step writes back the all-reduced sum). */
  setGrad(name: string, data: Float32Array | ArrayLike<number>): void {
    checkName(name, 'ParamStore.setGrad');
    callNativeSync(() => this.handle().setGrad(name, Float32Array.from(data)));
  }

  /** AdamW's first and second moments of a parameter (for checkpoints). */
  moments(name: string): { m: Float32Array; v: Float32Array } {
    checkName(name, 'ParamStore.moments');
    return callNativeSync(() => ({ m: this.handle().getMoment(name, 'm'), v: this.handle().getMoment(name, 'v') }));
  }

  setMoments(name: string, moments: { m: Float32Array | ArrayLike<number>; v: Float32Array | ArrayLike<number> }): void {
    checkName(name, 'ParamStore.setMoments');
    callNativeSync(() => {
      this.handle().setMoment(name, 'm', Float32Array.from(moments.m));
      this.handle().setMoment(name, 'v', Float32Array.from(moments.v));
    });
  }

  /** Global L2 norm of the gradients (sums of squares on the device: float32 per tensor, float64 per chunk on CUDA; added in float64). */
  gradNorm(): number {
    return callNativeSync(() => this.handle().gradNorm());
  }

  /**
   * Scales all gradients by maxNorm / (norm + 1e-6) when that is below 1 (PyTorch's clip_grad_norm_) and
   * returns the norm before clipping. A non-finite norm leaves the gradients untouched.
   */
  clipGradNorm(maxNorm: number): number {
    if (typeof maxNorm !== 'number' || !(maxNorm > 0) || !Number.isFinite(maxNorm)) invalid(`clipGradNorm: maxNorm must be a positive finite number, got ${String(maxNorm)}`);
    return callNativeSync(() => this.handle().clipGradNorm(maxNorm));
  }

  /** Zeroes every gradient; parameters without a new gradient are skipped by the next AdamW step. */
  zeroGrad(): void {
    callNativeSync(() => this.handle().zeroGrad());
  }

  /** One AdamW update of every parameter with a gradient; resolves to how many were updated. Prefer `AdamW`. */
  async adamwStep(options: AdamwStepOptions): Promise<number> {
    return callNative(() => this.handle().adamwStep({ ...options }));
  }

  /**
   * Writes every parameter's AdamW moments with the optimizer's `step` and `lr` to an optimizer-state file
   * (GGUF, kept apart from the adapter so the adapter stays a plain llama.cpp file). Prefer `AdamW.save`.
   */
  async saveState(path: string, state: NativeOptimizerState): Promise<void> {
    if (typeof path !== 'string' || path.length === 0) invalid('ParamStore.saveState: the path must be a non-empty string');
    const { step, lr } = state ?? {};
    if (!Number.isSafeInteger(step) || step < 0) invalid(`ParamStore.saveState: step must be a non-negative integer, got ${String(step)}`);
    if (typeof lr !== 'number' || !(lr > 0) || !Number.isFinite(lr)) invalid(`ParamStore.saveState: lr must be a positive finite number, got ${String(lr)}`);
    mkdirSync(dirname(path), { recursive: true });
    await callNative(() => this.handle().saveState(path, { step, lr }));
  }

  /**
   * Loads the moments from an optimizer-state file and resolves to its step and lr. The file must hold exactly
   * this store's parameters and shapes (ERR_STATE_INVALID otherwise); a failed load leaves the store untouched.
   */
  async loadState(path: string): Promise<NativeOptimizerState> {
    if (typeof path !== 'string' || path.length === 0) invalid('ParamStore.loadState: the path must be a non-empty string');
    return callNative(() => this.handle().loadState(path));
  }

  info(): NativeParamStoreInfo {
    return callNativeSync(() => this.handle().info());
  }

  /** @internal Runs a graph request with this store's parameters, on its device. */
  async runGraph(req: NativeGraphRequest): Promise<NativeGraphResult> {
    return callNative(() => this.binding.runGraph({ ...req, store: this.handle() }));
  }

  /** Frees the device memory. Idempotent. A LoRA adapter's store (`loraParams`) is freed by `adapter.dispose()` instead. */
  dispose(): void {
    if (this.borrowed) return;
    if (this.native) callNativeSync(() => this.native!.dispose());
    this.native = undefined;
  }
}

const adapterStores = new WeakMap<LoraAdapter, ParamStore>();

/**
 * A LoRA adapter's A and B tensors as trainable parameters (names as in the adapter file, e.g.
 * `blk.0.attn_q.weight.lora_a`): gradients from `LoraTrainer.backward` add up there, and `AdamW`, gradient
 * clipping and the optimizer-state file work on it. The values are the adapter's own memory, nothing is copied,
 * and the store is the same on every call; `adapter.dispose()` frees it. (`LoraTrainer.params` is the same store.)
 */
export function loraParams(adapter: LoraAdapter): ParamStore {
  let store = adapterStores.get(adapter);
  if (!store) {
    store = new ParamStore({}, { binding: adapter.model.binding, device: adapter.model.device, native: adapter.nativeParams() });
    adapterStores.set(adapter, store);
  }
  return store;
}

export interface AdamWOptions {
  /** Learning rate (default 1e-3, PyTorch's). */
  lr?: number;
  /** [beta1, beta2] (default [0.9, 0.999]). */
  betas?: readonly [number, number];
  /** Added to sqrt(v̂) (default 1e-8). */
  eps?: number;
  /** Decoupled weight decay: w <- w * (1 - lr * wd) before the Adam update (default 0.01, PyTorch's AdamW). */
  weightDecay?: number;
  /** Clip the global gradient norm to this before each step (default: no clipping). */
  maxGradNorm?: number;
}

export interface AdamWStepResult {
  /** The step just taken (1-based). */
  step: number;
  lr: number;
  /** Parameters updated (those with a gradient). */
  updated: number;
  /** The gradient norm before clipping, when `maxGradNorm` is set. */
  gradNorm?: number;
}

/**
 * AdamW over a ParamStore, as ggml implements it (ggml_opt_step_adamw): per element
 * m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; w = w (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
 */
export class AdamW {
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  readonly maxGradNorm: number | undefined;
  private t = 0;

  constructor(readonly store: ParamStore, options: AdamWOptions = {}) {
    if (!(store instanceof ParamStore)) invalid('AdamW: the first argument must be a ParamStore');
    this.lr = options.lr ?? 1e-3;
    [this.beta1, this.beta2] = options.betas ?? [0.9, 0.999];
    this.eps = options.eps ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 0.01;
    this.maxGradNorm = options.maxGradNorm;
    this.check(this.lr);
    if (this.maxGradNorm !== undefined && !(this.maxGradNorm > 0 && Number.isFinite(this.maxGradNorm))) {
      invalid(`AdamW: maxGradNorm must be a positive finite number, got ${String(this.maxGradNorm)}`);
    }
  }

  /**
   * The hyperparameters with learning rate `lr`, by the addon's rule (adamw.cpp, which checks every step anyway):
   * one owner, and bad values fail here, where the optimizer is made or the schedule sets the lr.
   */
  private check(lr: number): void {
    callNativeSync(() => this.store.binding.adamwCheck({ lr, beta1: this.beta1, beta2: this.beta2, eps: this.eps, weightDecay: this.weightDecay }));
  }

  /** Steps taken so far. */
  get stepCount(): number {
    return this.t;
  }

  /** Clips the global gradient norm; returns the norm before clipping. */
  clipGradNorm(maxNorm: number): number {
    return this.store.clipGradNorm(maxNorm);
  }

  zeroGrad(): void {
    this.store.zeroGrad();
  }

  /**
   * Clips (when `maxGradNorm` is set) and applies one AdamW update to every parameter with a gradient. `lr`
   * overrides the learning rate from this step on (schedules set it each step). Gradients are not cleared.
   */
  async step(options: { lr?: number } = {}): Promise<AdamWStepResult> {
    if (options.lr !== undefined) {
      this.check(options.lr);
      this.lr = options.lr;
    }
    const gradNorm = this.maxGradNorm !== undefined ? this.store.clipGradNorm(this.maxGradNorm) : undefined;
    const step = this.t + 1;
    const updated = await this.store.adamwStep({ lr: this.lr, beta1: this.beta1, beta2: this.beta2, eps: this.eps, weightDecay: this.weightDecay, step });
    this.t = step;
    return gradNorm === undefined ? { step, lr: this.lr, updated } : { step, lr: this.lr, updated, gradNorm };
  }

  /** The schedule state for checkpoints (the moments are in the store: `store.moments(name)`). */
  state(): { step: number; lr: number } {
    return { step: this.t, lr: this.lr };
  }

  loadState(state: { step: number; lr?: number }): void {
    if (!Number.isInteger(state.step) || state.step < 0) invalid(`AdamW.loadState: step must be a non-negative integer, got ${String(state.step)}`);
    if (state.lr !== undefined) this.check(state.lr);
    this.t = state.step;
    if (state.lr !== undefined) this.lr = state.lr;
  }

  /**
   * Writes the optimizer-state file: the store's moments, the step count and the current lr, which together
   * with the adapter let training resume exactly where it stopped. The hyperparameters are not saved: the
   * resuming code constructs its AdamW with them, as it did the first time.
   */
  async save(path: string): Promise<void> {
    await this.store.saveState(path, this.state());
  }

  /**
   * Restores the moments, the step count and the lr from `save`'s file (the saved lr replaces the current one,
   * so a schedule resumes where it was). The file is checked against the store first (ERR_STATE_INVALID).
   */
  async load(path: string): Promise<void> {
    const { step, lr } = await this.store.loadState(path);
    // The native side checked lr > 0; only this optimizer's weight decay can still reject it.
    if (lr * this.weightDecay > 1) {
      throw new Sqlr1Error('ERR_STATE_INVALID', `AdamW.load: the saved lr ${lr} times this optimizer's weightDecay ${this.weightDecay} exceeds 1 (the moments were loaded, the step count and lr were not)`);
    }
    this.t = step;
    this.lr = lr;
  }
}
