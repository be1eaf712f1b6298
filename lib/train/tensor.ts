/**
 * Lazy tensor expressions for composing losses. Each method returns a new `Tensor` node; nothing runs until
 * `backward(loss)` (or `evaluate`) ships the DAG to the addon, which compiles it into one ggml graph, adds
 * ggml's backward pass, runs it on the CPU or CUDA and returns values and gradients. Parameters live in a
 * `ParamStore` (device memory) and receive their gradients there; constants created with
 * `{ requiresGrad: true }` get theirs back in the result.
 *
 * Shapes are outermost first (row-major): a batch of N sequences of T tokens is [N, T], `sumRows` reduces the
 * last dimension ([N, T] -> [N, 1]) and [] is a scalar. Binary ops broadcast like numpy, restricted to one
 * side: shapes are aligned on the right and one operand's shape must cover the other's, each dimension of the
 * smaller one being equal or 1 ([N, T] with [N, 1], [T] or []). Shape errors throw ERR_INVALID_ARG where the
 * op is written.
 */
import { Sqlr1Error } from '../errors.js';
import { callNative, callNativeSync, getBinding, type DeviceRequest } from '../native/binding.js';
import type { NativeGraphNode, NativeGraphRequest, NativeGraphResult } from '../native/types.js';
import type { ParamStore } from './params.js';

export type Shape = readonly number[];

/** The ops a node can hold (the addon's names). */
export type TensorOp =
  | 'const' | 'param'
  | 'add' | 'sub' | 'mul' | 'div' | 'min' | 'max'
  | 'neg' | 'exp' | 'log' | 'step' | 'reshape'
  | 'scale' | 'add_scalar' | 'clamp'
  | 'sum' | 'mean' | 'sum_rows' | 'mean_rows'
  | 'masked_sum' | 'masked_mean' | 'masked_mean_rows';

export interface ConstantOptions {
  /** Return d loss / d this tensor from `backward` (default false). */
  requiresGrad?: boolean;
}

const MAX_DIMS = 4;

function invalid(msg: string): never {
  throw new Sqlr1Error('ERR_INVALID_ARG', msg);
}

function fmt(shape: Shape): string {
  return `[${shape.join(', ')}]`;
}

function sizeOf(shape: Shape): number {
  return shape.reduce((a, b) => a * b, 1);
}

function checkShape(shape: unknown, what: string): number[] {
  if (!Array.isArray(shape)) invalid(`${what}: shape must be an array of positive integers, got ${String(shape)}`);
  if (shape.length > MAX_DIMS) invalid(`${what}: a shape has at most ${MAX_DIMS} dimensions, got ${fmt(shape as number[])}`);
  for (const d of shape as unknown[]) {
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 1) invalid(`${what}: dimensions must be positive integers, got ${JSON.stringify(shape)}`);
  }
  if (sizeOf(shape as number[]) > 2 ** 31) invalid(`${what}: shape ${fmt(shape as number[])} has more than 2^31 elements`);
  return [...(shape as number[])];
}

/**
 * The shape of a binary op on `a` and `b`, or null when they do not broadcast. The rule is the addon's
 * (tensor_graph.cpp, which must check it before ggml would assert); asking it keeps one owner.
 */
function nativeBroadcastShape(a: Shape, b: Shape): Shape | null {
  const { binding } = getBinding('cpu');
  return callNativeSync(() => binding.broadcastShape([...a], [...b]));
}

function sameShape(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** True when `small` broadcasts to `big` (aligned on the right; each dimension equal or 1). */
export function broadcastsTo(small: Shape, big: Shape): boolean {
  const s = nativeBroadcastShape(small, big);
  return s !== null && sameShape(s, big);
}

function broadcastShape(op: string, a: Shape, b: Shape): Shape {
  const s = nativeBroadcastShape(a, b);
  if (s !== null) return s;
  return invalid(`${op}: shapes ${fmt(a)} and ${fmt(b)} do not broadcast (one shape must cover the other, each dimension equal or 1, aligned on the right)`);
}

function checkNumber(op: string, what: string, x: unknown): number {
  if (typeof x !== 'number' || !Number.isFinite(x) || Math.abs(x) > 3e38) invalid(`${op}: ${what} must be a finite number, got ${String(x)}`);
  return x;
}

function rowsShape(s: Shape): Shape {
  return s.length === 0 ? [] : [...s.slice(0, -1), 1];
}

export class Tensor {
  /** @internal */ readonly op: TensorOp;
  /** @internal */ readonly inputs: readonly Tensor[];
  /** @internal */ readonly params: readonly number[];
  /** @internal */ readonly data: Float32Array | undefined;
  /** @internal */ readonly paramName: string | undefined;
  /** @internal */ readonly store: ParamStore | undefined;
  readonly shape: Shape;
  /** Constants only: `backward` returns d loss / d this tensor. */
  readonly requiresGrad: boolean;

  private constructor(init: {
    op: TensorOp; shape: Shape; inputs?: readonly Tensor[]; params?: readonly number[]; data?: Float32Array;
    paramName?: string; store?: ParamStore; requiresGrad?: boolean;
  }) {
    this.op = init.op;
    this.shape = Object.freeze([...init.shape]);
    this.inputs = init.inputs ?? [];
    this.params = init.params ?? [];
    this.data = init.data;
    this.paramName = init.paramName;
    this.store = init.store;
    this.requiresGrad = init.requiresGrad ?? false;
  }

  /** A constant with row-major `data` (copied) of `shape`. */
  static constant(data: Float32Array | ArrayLike<number>, shape: Shape, options: ConstantOptions = {}): Tensor {
    const s = checkShape(shape, 'Tensor.constant');
    if (data === null || typeof data !== 'object' || typeof (data as ArrayLike<number>).length !== 'number') {
      invalid('Tensor.constant: data must be a Float32Array or an array of numbers');
    }
    if (data.length !== sizeOf(s)) invalid(`Tensor.constant: shape ${fmt(s)} has ${sizeOf(s)} elements but data has ${data.length}`);
    return new Tensor({ op: 'const', shape: s, data: Float32Array.from(data), requiresGrad: options.requiresGrad === true });
  }

  /** A scalar constant. */
  static scalar(value: number, options: ConstantOptions = {}): Tensor {
    return Tensor.constant([checkNumber('Tensor.scalar', 'value', value)], [], options);
  }

  /** A constant filled with `value`. */
  static full(shape: Shape, value: number): Tensor {
    const s = checkShape(shape, 'Tensor.full');
    return new Tensor({ op: 'const', shape: s, data: new Float32Array(sizeOf(s)).fill(checkNumber('Tensor.full', 'value', value)) });
  }

  /** @internal A reference to a parameter of `store` (use `store.param(name)`). */
  static param(store: ParamStore, name: string, shape: Shape): Tensor {
    return new Tensor({ op: 'param', shape, paramName: name, store });
  }

  /** Number of elements. */
  get size(): number {
    return sizeOf(this.shape);
  }

  private unary(op: TensorOp, params: number[] = [], shape: Shape = this.shape): Tensor {
    return new Tensor({ op, shape, inputs: [this], params });
  }

  private binary(op: TensorOp, name: string, other: Tensor): Tensor {
    if (!(other instanceof Tensor)) invalid(`${name}: the operand must be a Tensor or a number`);
    return new Tensor({ op, shape: broadcastShape(name, this.shape, other.shape), inputs: [this, other] });
  }

  /** this + other (a number adds a scalar). */
  add(other: Tensor | number): Tensor {
    return typeof other === 'number' ? this.addScalar(other) : this.binary('add', 'add', other);
  }

  /** this - other. */
  sub(other: Tensor | number): Tensor {
    return typeof other === 'number' ? this.addScalar(-checkNumber('sub', 'the operand', other)) : this.binary('sub', 'sub', other);
  }

  /** this * other (a number scales). */
  mul(other: Tensor | number): Tensor {
    return typeof other === 'number' ? this.scale(other) : this.binary('mul', 'mul', other);
  }

  /** this / other (a number scales by its reciprocal). */
  div(other: Tensor | number): Tensor {
    if (typeof other === 'number') {
      if (checkNumber('div', 'the divisor', other) === 0) invalid('div: division by the number 0');
      return this.scale(1 / other);
    }
    return this.binary('div', 'div', other);
  }

  /** Element-wise minimum; at a tie the gradient goes to `this`. */
  minimum(other: Tensor): Tensor {
    return this.binary('min', 'minimum', other);
  }

  /** Element-wise maximum; at a tie the gradient goes to `this`. */
  maximum(other: Tensor): Tensor {
    return this.binary('max', 'maximum', other);
  }

  neg(): Tensor {
    return this.unary('neg');
  }

  exp(): Tensor {
    return this.unary('exp');
  }

  /** Natural log (NaN for negative inputs, -Infinity at 0). */
  log(): Tensor {
    return this.unary('log');
  }

  /** 1 where this > 0, else 0; no gradient flows through it (for metrics and masks). */
  step(): Tensor {
    return this.unary('step');
  }

  /** this * s. */
  scale(s: number): Tensor {
    return this.unary('scale', [checkNumber('scale', 'the factor', s)]);
  }

  /** this + c. */
  addScalar(c: number): Tensor {
    return this.unary('add_scalar', [checkNumber('addScalar', 'the addend', c)]);
  }

  /** Clamps into [lo, hi]; the gradient is 1 inside and 0 outside. */
  clamp(lo: number, hi: number): Tensor {
    checkNumber('clamp', 'min', lo);
    checkNumber('clamp', 'max', hi);
    if (!(lo <= hi)) invalid(`clamp: needs min <= max, got [${lo}, ${hi}]`);
    return this.unary('clamp', [lo, hi]);
  }

  /** The same elements under another shape (same element count). */
  reshape(shape: Shape): Tensor {
    const s = checkShape(shape, 'reshape');
    if (sizeOf(s) !== this.size) invalid(`reshape: cannot reshape ${fmt(this.shape)} to ${fmt(s)}: the element counts differ`);
    return new Tensor({ op: 'reshape', shape: s, inputs: [this] });
  }

  /** Sum of all elements: a scalar. */
  sum(): Tensor {
    return this.unary('sum', [], []);
  }

  /** Mean of all elements: a scalar. */
  mean(): Tensor {
    return this.unary('mean', [], []);
  }

  /** Sum over the last dimension, kept as 1: [N, T] -> [N, 1]. */
  sumRows(): Tensor {
    return this.unary('sum_rows', [], rowsShape(this.shape));
  }

  /** Mean over the last dimension, kept as 1: [N, T] -> [N, 1]. */
  meanRows(): Tensor {
    return this.unary('mean_rows', [], rowsShape(this.shape));
  }

  private masked(op: TensorOp, name: string, mask: Tensor, shape: Shape): Tensor {
    if (!(mask instanceof Tensor)) invalid(`${name}: the mask must be a Tensor`);
    if (!broadcastsTo(mask.shape, this.shape)) invalid(`${name}: the mask's shape ${fmt(mask.shape)} must broadcast to ${fmt(this.shape)}`);
    return new Tensor({ op, shape, inputs: [this, mask] });
  }

  /** sum(this * mask): a scalar. */
  maskedSum(mask: Tensor): Tensor {
    return this.masked('masked_sum', 'maskedSum', mask, []);
  }

  /** sum(this * mask) / max(sum(mask), 1): a scalar (0 for an empty mask, as TRL's clamp(min=1)). */
  maskedMean(mask: Tensor): Tensor {
    return this.masked('masked_mean', 'maskedMean', mask, []);
  }

  /** Per row: sumRows(this * mask) / max(sumRows(mask), 1): [N, T] -> [N, 1]. */
  maskedMeanRows(mask: Tensor): Tensor {
    return this.masked('masked_mean_rows', 'maskedMeanRows', mask, rowsShape(this.shape));
  }
}

export interface RunOptions {
  /** The store of the graph's parameters; found from the graph when omitted. Its device runs the graph. */
  store?: ParamStore;
  /** Device for graphs without parameters: 'cpu' (default), 'cuda' or 'auto'. */
  device?: DeviceRequest;
  /** CPU threads for graphs without a store (default 1: loss graphs are small). */
  threads?: number;
}

export interface BackwardOptions extends RunOptions {
  /** Tensors whose values to return besides the loss (metrics, intermediate values). */
  outputs?: readonly Tensor[];
}

export interface BackwardResult {
  /** The loss value. */
  loss: number;
  /** Values of the loss and of `outputs`. */
  values: Map<Tensor, Float32Array>;
  /** d loss / d t for every constant t created with `{ requiresGrad: true }` in the graph. */
  grads: Map<Tensor, Float32Array>;
}

interface Compiled {
  request: NativeGraphRequest;
  index: Map<Tensor, number>;
  nodes: Tensor[];
}

/** Serializes the DAG under `roots` (inputs before users) and finds its store. */
function compile(roots: readonly Tensor[], options: RunOptions): { nodes: Tensor[]; index: Map<Tensor, number>; store: ParamStore | undefined } {
  const index = new Map<Tensor, number>();
  const nodes: Tensor[] = [];
  let store = options.store;
  // Iterative post-order: deep chains must not overflow the stack.
  for (const root of roots) {
    if (!(root instanceof Tensor)) invalid('backward: every output must be a Tensor');
    const stack: Array<{ t: Tensor; next: number }> = [{ t: root, next: 0 }];
    const onStack = new Set<Tensor>([root]);
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      if (index.has(top.t)) { stack.pop(); onStack.delete(top.t); continue; }
      if (top.next < top.t.inputs.length) {
        const child = top.t.inputs[top.next++]!;
        if (!index.has(child) && !onStack.has(child)) { stack.push({ t: child, next: 0 }); onStack.add(child); }
        continue;
      }
      stack.pop();
      onStack.delete(top.t);
      if (top.t.op === 'param') {
        if (store === undefined) store = top.t.store;
        else if (top.t.store !== store) invalid(`backward: parameter '${top.t.paramName}' belongs to another ParamStore than the graph's`);
      }
      index.set(top.t, nodes.length);
      nodes.push(top.t);
    }
  }
  return { nodes, index, store };
}

function request(outputs: readonly Tensor[], loss: Tensor | undefined, options: RunOptions): Compiled & { store: ParamStore | undefined } {
  const { nodes, index, store } = compile(loss ? [loss, ...outputs] : outputs, options);
  const wanted = new Set<Tensor>(outputs);
  if (loss) wanted.add(loss);
  const native: NativeGraphNode[] = nodes.map((t) => {
    const n: NativeGraphNode = { op: t.op };
    if (t.inputs.length > 0) n.inputs = t.inputs.map((x) => index.get(x)!);
    if (t.params.length > 0) n.params = [...t.params];
    if (t.op === 'const') { n.shape = [...t.shape]; n.data = t.data!; }
    if (t.op === 'reshape') n.shape = [...t.shape];
    if (t.op === 'param') n.param = t.paramName!;
    if (wanted.has(t)) n.output = true;
    if (t.requiresGrad) n.requiresGrad = true;
    return n;
  });
  const req: NativeGraphRequest = { nodes: native };
  if (loss) req.loss = index.get(loss)!;
  return { request: req, index, nodes, store };
}

async function run(req: NativeGraphRequest, store: ParamStore | undefined, options: RunOptions): Promise<NativeGraphResult> {
  if (store) return store.runGraph(req);
  const threads = options.threads ?? 1;
  if (!Number.isInteger(threads) || threads < 0) invalid(`threads must be a non-negative integer, got ${String(threads)}`);
  const { binding, device } = getBinding(options.device ?? 'cpu');
  return callNative(() => binding.runGraph({ ...req, device, threads }));
}

/**
 * Runs `loss` (a scalar) forward and backward. Parameter gradients are added to the store's accumulators
 * (`store.grad(name)`; clear them with `zeroGrad()`); constants created with `{ requiresGrad: true }` get
 * theirs in `grads`.
 */
export async function backward(loss: Tensor, options: BackwardOptions = {}): Promise<BackwardResult> {
  if (!(loss instanceof Tensor)) invalid('backward: loss must be a Tensor');
  if (loss.size !== 1) invalid(`backward: the loss must be a scalar, got shape ${fmt(loss.shape)}`);
  const outputs = options.outputs ?? [];
  const c = request(outputs, loss, options);
  const r = await run(c.request, c.store, options);
  const values = new Map<Tensor, Float32Array>();
  for (const o of r.outputs) values.set(c.nodes[o.node]!, o.data);
  const grads = new Map<Tensor, Float32Array>();
  for (const g of r.grads) grads.set(c.nodes[g.node]!, g.data);
  return { loss: r.loss ?? values.get(loss)![0]!, values, grads };
}

/** Runs the graph forward only and returns the values of `tensors`, in order. */
export async function evaluate(tensors: readonly Tensor[], options: RunOptions = {}): Promise<Float32Array[]> {
  if (!Array.isArray(tensors) || tensors.length === 0) invalid('evaluate: pass a non-empty array of tensors');
  const c = request(tensors, undefined, options);
  const r = await run(c.request, c.store, options);
  const byNode = new Map<number, Float32Array>(r.outputs.map((o) => [o.node, o.data]));
  return tensors.map((t) => byNode.get(c.index.get(t)!)!);
}
