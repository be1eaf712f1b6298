/**
 * The exact shape of the addon's training surface (native/src/tensor_graph.cpp, adamw.cpp, train_napi.cpp):
 * the `ParamStore` class, `runGraph` and `createTrainer`. The training layer touches those exports only
 * through these types.
 */
import { Sqlr1Error } from '../errors.js';
import type { NativeBinding, NativeLoraAdapter, NativeModel } from '../native/types.js';

/** One node of a graph request. Shapes are outermost first (row-major); [] is a scalar. */
export interface NativeGraphNode {
  op: string;
  /** Indices of the input nodes (any order; the graph must be acyclic). */
  inputs?: number[];
  /** Scalar parameters: scale [s], add_scalar [c], clamp [lo, hi]. */
  params?: number[];
  /** const and reshape: the shape. */
  shape?: number[];
  /** const: the values, row-major. */
  data?: Float32Array;
  /** param: the parameter's name in the request's store. */
  param?: string;
  /** Return this node's value. */
  output?: boolean;
  /** const only: return d loss / d this node. */
  requiresGrad?: boolean;
}

export interface NativeGraphRequest {
  nodes: NativeGraphNode[];
  /** Index of the scalar loss node; without it the graph runs forward only. */
  loss?: number;
  /** 'cpu' (default) or 'cuda'; a store's own device wins. */
  device?: 'cpu' | 'cuda';
  threads?: number;
  store?: NativeParamStore;
}

export interface NativeGraphTensor {
  node: number;
  shape: number[];
  data: Float32Array;
}

export interface NativeGraphResult {
  loss?: number;
  /** Nodes marked `output`, in node order. */
  outputs: NativeGraphTensor[];
  /** Consts marked `requiresGrad`, in node order (zeros where no gradient flows). */
  grads: NativeGraphTensor[];
  /** Store parameters that received a gradient in this run. */
  paramsWithGrad: string[];
}

export interface NativeAdamwOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step count for the bias corrections. */
  step: number;
}

/** The optimizer's own state in an optimizer-state file: steps taken (0 before the first) and the lr. */
export interface NativeOptimizerState {
  step: number;
  lr: number;
}

export interface NativeParamStoreInfo {
  device: 'cpu' | 'cuda';
  threads: number;
  count: number;
  elements: number;
  bytes: number;
}

export interface NativeParamStore {
  info(): NativeParamStoreInfo;
  add(name: string, shape: number[], data: Float32Array): void;
  get(name: string): Float32Array;
  set(name: string, data: Float32Array): void;
  shape(name: string): number[];
  names(): string[];
  /** The accumulated gradient, or null when none arrived since the last zeroGrad. */
  grad(name: string): Float32Array | null;
  getMoment(name: string, which: 'm' | 'v'): Float32Array;
  setMoment(name: string, which: 'm' | 'v', data: Float32Array): void;
  gradNorm(): number;
  /** Returns the norm before clipping. */
  clipGradNorm(maxNorm: number): number;
  zeroGrad(): void;
  /** Resolves to the number of parameters updated. */
  adamwStep(options: NativeAdamwOptions): Promise<number>;
  /** Writes every parameter's moments plus the optimizer's step count and lr as GGUF (temporary file, rename). */
  saveState(path: string, state: NativeOptimizerState): Promise<void>;
  /** Checks the whole file against the store before writing any moment; resolves to the saved step and lr. */
  loadState(path: string): Promise<NativeOptimizerState>;
  dispose(): void;
}

export interface NativeTrainerForward {
  tokens: Int32Array;
  targets: Int32Array;
  ns: number;
  nt: number;
  temperature: number;
  adapter: boolean;
  keep: boolean;
}

export interface NativeTrainerMemory {
  /** The output weight converted to the compute type, and the dequantization index. */
  fixed: number;
  /** Saved activations (each layer's input) and gradient carriers. */
  kept: number;
  /** The compute buffer, sized by the largest graph so far. */
  compute: number;
}

export interface NativeTrainer {
  forward(req: NativeTrainerForward): Promise<Float32Array>;
  backward(dlogp: Float32Array): Promise<void>;
  memory(): NativeTrainerMemory;
  release(): void;
  dispose(): void;
}

export interface NativeTrainerOptions {
  compute: 'f32' | 'bf16';
  maxTokens: number;
  /** Wait after each graph and kernel of a layer-by-layer CUDA pass (default false). */
  sync?: boolean;
  /** 1: print each backward's timings (implies sync); 2: also run graphs node by node (default 0). */
  profile?: 0 | 1 | 2;
  /** CUDA BF16 passes around the project's kernels (default true). */
  fusedKernels?: boolean;
}

export interface NativeTrainBinding {
  ParamStore: new (options: { device: 'cpu' | 'cuda'; threads?: number }) => NativeParamStore;
  runGraph(req: NativeGraphRequest): Promise<NativeGraphResult>;
  createTrainer(model: NativeModel, lora: NativeLoraAdapter, options: NativeTrainerOptions): Promise<NativeTrainer>;
}

/** The tensor-graph exports of a loaded addon; ERR_NATIVE_LOAD when the binary predates them. */
export function trainBinding(binding: NativeBinding): NativeTrainBinding {
  const b = binding as unknown as Partial<NativeTrainBinding>;
  if (typeof b.runGraph !== 'function' || typeof b.ParamStore !== 'function' || typeof b.createTrainer !== 'function') {
    throw new Sqlr1Error('ERR_NATIVE_LOAD', 'the native addon has no tensor-graph surface (ParamStore, runGraph): rebuild it with `npm run build:native`');
  }
  return b as NativeTrainBinding;
}
