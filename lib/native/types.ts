/**
 * The exact shape of the native addon (native/src/addon.cpp; the training surface in tensor_graph.cpp,
 * adamw.cpp and train_napi.cpp). The TypeScript layer touches the addon only through these types, and the
 * loader (binding.ts) checks that a loaded binary has every function listed here.
 */

export interface NativeModelInfo {
  arch: string;
  nVocab: number;
  nCtxTrain: number;
  nEmbd: number;
  nLayer: number;
  nFf: number;
  nHead: number;
  nHeadKv: number;
  headDim: number;
  ropeFreqBase: number;
  device: 'cpu' | 'cuda';
  weightBytes: number;
  tiedOutput: boolean;
  weightType: string;
  /** Layers whose q/k/v (with their biases) and gate/up weights are stored as one tensor each and run as one product. */
  fusedLayers: { qkv: number; gateUp: number };
}

export interface NativeModel {
  info(): NativeModelInfo;
  /** 64-bit FNV-1a digest (hex) of every weight tensor's bytes, read back from the device. */
  weightDigests(): Record<string, string>;
  dispose(): void;
}

export interface NativeSampleRequest {
  temperature: number;
  topK: number;
  topP: number;
  seeds: BigUint64Array;
}

export interface NativeEvalRequest {
  streams: Int32Array;
  tokens: Int32Array;
  nt: number;
  allLogits?: boolean;
  wantLogits?: boolean;
  sample?: NativeSampleRequest;
  /** Teacher forcing: one target id per token (-1 = none); the result has each target's log-prob. */
  targets?: Int32Array;
  /** Temperature of the teacher-forced log-probs (default 1). */
  temperature?: number;
}

export interface NativeEvalResult {
  logits?: Float32Array;
  nVocab?: number;
  tokens?: Int32Array;
  logprobs?: Float32Array;
  /** Per token: log softmax(logits / T)[target] (NaN where the target was -1). */
  targetLogprobs?: Float32Array;
}

export interface NativeDecodeRequest {
  streams: Int32Array;
  /** The next token to feed, per stream. */
  tokens: Int32Array;
  seeds: BigUint64Array;
  /** Tokens each stream may still draw. */
  budget: Int32Array;
  /** End-of-generation ids: a stream stops after drawing one. */
  eog: Int32Array;
  steps: number;
  temperature: number;
  topK: number;
  topP: number;
}

export interface NativeDecodeResult {
  steps: number;
  /** [steps][streams]; -1 where a stream had stopped. */
  tokens: Int32Array;
  logprobs: Float32Array;
}

export interface NativeContextMemory {
  kvBytes: number;
  computeBytes: number;
  weightBytes: number;
  capacity: number;
  nSeq: number;
}

export interface NativeLoraInfo {
  rank: number;
  alpha: number;
  enabled: boolean;
  targets: string[];
  bytes: number;
}

export interface NativeLoraAdapter {
  info(): NativeLoraInfo;
  setEnabled(on: boolean): void;
  tensorNames(): string[];
  getTensor(name: string): Float32Array;
  setTensor(name: string, data: Float32Array): void;
  save(path: string): Promise<void>;
  /** The adapter's tensors as a ParamStore (the same store on every call while one is held). */
  params(): NativeParamStore;
  dispose(): void;
}

export interface NativeContext {
  eval(req: NativeEvalRequest): Promise<NativeEvalResult>;
  decode(req: NativeDecodeRequest): Promise<NativeDecodeResult>;
  seqCopy(src: number, dsts: Int32Array): void;
  seqClear(seq: number): void;
  seqLength(seq: number): number;
  memory(): NativeContextMemory;
  setLora(adapter: NativeLoraAdapter | null): void;
  dispose(): void;
}

export interface NativeOpInput {
  data: Float32Array | Int32Array;
  shape: number[];
  type?: string;
}

export interface NativeOpRequest {
  op: string;
  device: 'cpu' | 'cuda';
  inputs: NativeOpInput[];
  params?: number[];
}

export interface NativeBinding {
  Model: abstract new () => NativeModel;
  Context: new (model: NativeModel, options: { nSeq: number; nCtx: number; nBatch: number; packAdapter?: boolean }) => NativeContext;
  LoraAdapter: abstract new () => NativeLoraAdapter;
  ParamStore: new (options: { device: 'cpu' | 'cuda'; threads?: number }) => NativeParamStore;
  runGraph(req: NativeGraphRequest): Promise<NativeGraphResult>;
  /** Throws ERR_INVALID_ARG unless the AdamW hyperparameters are valid (adamwStep's rule). */
  adamwCheck(options: Omit<NativeAdamwOptions, 'step'>): void;
  /** The shape of a binary op on shapes a and b (runGraph's broadcast rule), or null when they do not broadcast. */
  broadcastShape(a: number[], b: number[]): number[] | null;
  createTrainer(model: NativeModel, lora: NativeLoraAdapter, options: NativeTrainerOptions): Promise<NativeTrainer>;
  createLora(model: NativeModel, options: { rank: number; alpha: number; targets: string[]; seed: number }): NativeLoraAdapter;
  loadLora(model: NativeModel, path: string): Promise<NativeLoraAdapter>;
  loadModel(path: string, options: { device: 'cpu' | 'cuda'; threads?: number }): Promise<NativeModel>;
  makeModel(options: { shape: string; type: string; out: string; vocab?: string; seed?: number; threads?: number }): Promise<number>;
  /** cudaArchitectures: what CMAKE_CUDA_ARCHITECTURES compiled in ("90-real,90-virtual"); "" in CPU builds. */
  buildInfo(): { cuda: boolean; cudaArchitectures?: string; ggmlVersion: string; ggmlCommit: string };
  /** computeCapability: "major.minor", "" when unknown. */
  cudaDevices(): Array<{ name: string; freeBytes: number; totalBytes: number; computeCapability?: string }>;
  runOp(req: NativeOpRequest): Promise<{ data: Float32Array; shape: number[] }>;
  sampleRows(req: {
    device: 'cpu' | 'cuda'; logits: Float32Array; nVocab: number; seeds: BigUint64Array; positions: BigUint64Array;
    temperature: number; topK?: number; topP?: number;
  }): { tokens: Int32Array; logprobs: Float32Array };
  /** Test-only: the project's CUDA kernels on host arrays (native/src/test_hooks.h), made when asked for. */
  testHooks(): NativeTestHooks;
  /** NCCL, opened at run time (native/src/nccl.h); every call fails with ERR_NCCL where it cannot be used. */
  nccl: NativeNccl;
}

export interface NativeNccl {
  /** Opens the library (default: libnccl.so.2 on the loader's path) once per process. */
  load(library?: string): { path: string; version: number; versionString: string };
  /** A new 128-byte id for init (rank 0's, handed to the others). */
  uniqueId(library?: string): Uint8Array;
  /** Joins the communicator on CUDA device `device`; settles once every rank has joined. */
  init(options: { id: Uint8Array; nranks: number; rank: number; device: number; library?: string }): Promise<NativeNcclCommunicator>;
}

export interface NativeNcclCommunicator {
  /** `buf` becomes the sum over ranks (float32, staged through device memory). */
  allReduceSum(buf: Float32Array, timeoutMs: number): Promise<void>;
  /** `buf` becomes rank `root`'s. */
  broadcast(buf: Float32Array, root: number, timeoutMs: number): Promise<void>;
  close(): void;
}

/** The test-only kernel entry points (CUDA builds; each fails with ERR_NO_CUDA elsewhere). */
export interface NativeTestHooks {
  /** The training attention kernels on host data (CUDA builds; tests). dk and dv are per KV head. */
  attentionCuda(req: {
    q: Float32Array; k: Float32Array; v: Float32Array; dout: Float32Array;
    headDim: number; heads: number; kvHeads: number; nt: number; ns: number; scale?: number;
    /** {from, sharedEnd, ownFrom} per token (NativeTrainerForward.span); default causal. */
    span?: Int32Array;
  }): { o: Float32Array; lse: Float32Array; dq: Float32Array; dk: Float32Array; dv: Float32Array };
  /** The training graphs' flash attention mask written on the device (CUDA builds; tests): F16 words, 0 where a
   * query sees a key and -inf elsewhere, [nt keys, nt queries, ns]. */
  attentionMaskCuda(req: { nt: number; ns: number; span?: Int32Array }): Uint16Array;
  /** The training graphs' Q4_0 -> BF16 dequantization on host data (CUDA builds; tests): BF16 words. */
  dequantQ4_0Cuda(blocks: Uint8Array, n: number): Uint16Array;
  /** The training SwiGLU kernel on host data (CUDA builds; tests). */
  swigluCuda(req: {
    /** Without dh the kernel runs forward only and returns h. */
    F: number; T: number; rank: number; g: Float32Array; u: Float32Array; dh?: Float32Array;
    bg?: Float32Array; zg?: Float32Array; bu?: Float32Array; zu?: Float32Array; ad?: Float32Array; dzd?: Float32Array;
    /** Token strides of g, u (default F) and of zg, zu (default rank): rows of wider arrays. */
    ld?: number; ldz?: number;
    /** Also return the kernel's BF16 copies of dg and du (raw 16-bit words). */
    bf16?: boolean;
    /** Gradients the kernel adds the adapters' sums into (rank <= 16): dBg += zg dg^T, dBu += zu du^T, dAd += h dzd^T. */
    grads?: { bg?: Float32Array; bu?: Float32Array; ad?: Float32Array };
  }): {
    h: Float32Array; dg?: Float32Array; du?: Float32Array; dgBf16?: Uint16Array; duBf16?: Uint16Array;
    grads?: { bg?: Float32Array; bu?: Float32Array; ad?: Float32Array };
  };
}

// The training surface: graphs with autodiff, parameter stores with AdamW, and the LoRA trainer.

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
  /** Replaces the accumulated gradient (it then counts as arrived). */
  setGrad(name: string, data: Float32Array): void;
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
  /** Each token's position [ns * nt] (default 0..nt-1 in every sequence). */
  pos?: Int32Array;
  /**
   * Which keys each token sees [3 * ns * nt], sequence-local {from, sharedEnd, ownFrom}: token j sees
   * [from, sharedEnd) and [ownFrom, j] (default causal).
   */
  span?: Int32Array;
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
