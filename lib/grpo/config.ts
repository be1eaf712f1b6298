/**
 * The GRPO run configuration: every option with its default and the reason for it, validation with zod, YAML
 * loading and writing. Keys follow TRL's GRPOConfig where TRL has the concept (snake_case in YAML, camelCase in
 * code; both spellings are accepted). Every error is ERR_CONFIG naming the key, the value and the file, raised
 * before any model is loaded.
 */
import { readFile } from 'node:fs/promises';
import { parse as parseYaml, parseDocument, Document, isMap, isScalar, isSeq, YAMLParseError } from 'yaml';
import { z } from 'zod';
import { Sqlr1Error } from '../errors.js';
import { LORA_TARGETS, type LoraTarget } from '../model/lora.js';
import { defaultPreset, sqlR1Preset } from '../rewards/presets.js';
import type { PresetName } from '../rewards/compose.js';
import type { GrpoLossType, KlEstimator } from '../train/grpo-loss.js';
import type { ScaleRewards } from './advantages.js';
import type { LrSchedulerType } from './schedule.js';

export interface GrpoLoraConfig {
  /** Rank r. Default 16 (the seed's): enough capacity for a task adapter, 2 x 16 x d parameters per layer. */
  rank: number;
  /** alpha; the update is scaled by alpha / r. Default 32 (the seed's; 2r, the common LoRA choice). */
  alpha: number;
  /** Linear layers with an adapter. Default all seven (q k v o gate up down), the seed's choice and QLoRA's. */
  targets: LoraTarget[];
  /** An adapter file to start from (resume or continue), instead of a fresh one. Default null (fresh). */
  path: string | null;
}

export interface GrpoConfig {
  /** AdamW peak learning rate. Default 5e-6 (the seed's): small steps keep the policy near the reference. */
  learningRate: number;
  /** Decay after warmup: 'constant', 'linear' (to 0 at the last step) or 'cosine'. Default 'linear' (TRL's). */
  lrSchedulerType: LrSchedulerType;
  /** Optimizer steps of linear warmup from 0. Default 0 (TRL's). */
  warmupSteps: number;
  /** AdamW decoupled weight decay. Default 0.01 (the seed's). */
  weightDecay: number;
  /** Clip the gradient's global L2 norm to this; 0 disables clipping. Default 1.0 (TRL's). */
  maxGradNorm: number;
  /** Passes over the training questions (may be fractional). Default 2 (the seed's). */
  numTrainEpochs: number;
  /** Total optimizer steps; -1 derives them from numTrainEpochs. Default -1. */
  maxSteps: number;
  /** Completions per prompt, the group size K. Default 4 (the seed's); at least 2, a group needs a spread. */
  numGenerations: number;
  /** Most new tokens per completion. Default 256 (the seed's): a Spider query with a short plan fits. */
  maxCompletionLength: number;
  /** Sampling temperature. Default 0.7 (the seed's): diverse groups without drifting into noise. */
  temperature: number;
  /** Nucleus sampling mass; 1 disables it. Default 1.0 (TRL's). */
  topP: number;
  /** Sample among the k most likely tokens; 0 disables it. Default 0 (TRL's: off). */
  topK: number;
  /** KL coefficient; 0 skips the reference pass entirely. Default 0.05 (the seed's). */
  beta: number;
  /** Clip range: ratios below 1 - epsilon (and above 1 + epsilonHigh) are clipped. Default 0.2 (PPO's, TRL's). */
  epsilon: number;
  /** Upper clip range; null means epsilon. Default null (DAPO's clip-higher uses 0.28). */
  epsilonHigh: number | null;
  /**
   * Aggregation of the per-token loss: 'grpo' (per-sequence mean, then mean), 'bnpo' (token mean per
   * micro-batch), 'dr_grpo' (sum / (sequences x maxCompletionLength)), 'dapo' (token mean over the whole batch).
   * Default 'dapo' (TRL's): no bias toward short or long completions, and exact under gradient accumulation.
   */
  lossType: GrpoLossType;
  /** Advantage scaling: by the group's std, the batch's std, or none (Dr. GRPO). Default 'group' (TRL's). */
  scaleRewards: ScaleRewards;
  /** Updates per batch of rollouts (GRPO's mu). Default 1 (TRL's): on-policy, the ratio starts at 1. */
  numIterations: number;
  /** Give no gradient to completions cut at maxCompletionLength. Default false (TRL's). */
  maskTruncatedCompletions: boolean;
  /** Built-in reward components: 'default' (the project's table), 'sql-r1' or 'none'. Default 'default'. */
  rewardPreset: PresetName;
  /** Weight per reward component name (absent: 1). Default {} (every component weighs 1). */
  rewardWeights: Record<string, number>;
  /** Seed of sampling, data order and adapter initialization. Default 42 (TRL's). */
  seed: number;
  /** Write metrics every this many steps. Default 1: a GRPO step is slow, each one is worth a line. */
  loggingSteps: number;
  /** Evaluate every this many steps; 0 evaluates only at the end. Default 50 (the seed's). */
  evalSteps: number;
  /** Save a checkpoint every this many steps; 0 saves only at the end. Default 50: an adapter is a few MiB. */
  saveSteps: number;
  /** The run directory. Default 'runs/grpo'. */
  outputDir: string;
  /** Questions per optimizer step (each sampled numGenerations times). Default 8: 32 completions per step at K 4. */
  promptsPerStep: number;
  /** Most tokens (prompt + completion, padded) per micro-batch of the policy pass. Default 8192. */
  microBatchTokens: number;
  /**
   * The reference and policy passes run each group's prompt once, every completion seeing it and itself (the same
   * log-probs up to rounding; a group of K then costs its prompt once instead of K times). Default true.
   */
  sharePrompts: boolean;
  /** KL estimator: 'k3' (exp(d) - d - 1, d = ref - logp; unbiased and >= 0) or 'k1' (logp - ref). Default 'k3' (TRL GRPO's). */
  klEstimator: KlEstimator;
  /** The LoRA adapter that is trained. */
  lora: GrpoLoraConfig;
  /** 'auto' (CUDA when present, else CPU), 'cpu' or 'cuda'. Default 'auto'. */
  device: 'auto' | 'cpu' | 'cuda';
  /**
   * What moves gradients between the ranks of a data-parallel run (TRL's ddp_backend): 'nccl' (GPU to GPU),
   * 'tcp' (through the host, any device) or 'auto': NCCL when the run is on CUDA, else TCP. Default 'auto'; unused
   * in one process.
   */
  ddpBackend: 'auto' | 'nccl' | 'tcp';
  /** Supervised warm-up steps on gold answers before GRPO (SQL-R1's cold start); 0 skips it. Default 0. */
  sftSteps: number;
  /** Learning rate of the warm-up. Default 1e-4: a common LoRA fine-tuning rate, larger than RL's. */
  sftLearningRate: number;
  /** Questions per evaluation; 0 uses the whole eval set. Default 200 (a dev subset, as the contract's example). */
  evalSamples: number;
  /** Samples per question voted by execution result at eval; 0 or 1 is greedy. Default 0 (greedy). */
  evalVote: number;
  /**
   * Weight the surrogate by min(exp(oldLogp - samplerLogp), cap) (truncated importance sampling, TRL's
   * vllm_importance_sampling_correction). Default false: sampler and training graph are the same weights in
   * one process and differ only by rounding; turn it on when the sampling_logp_difference metrics are large.
   */
  importanceSamplingCorrection: boolean;
  /** The truncation cap of that weight. Default 2 (the TIS paper's and TRL's first default). */
  importanceSamplingCap: number;
  /** The base model: a GGUF path, or null when the caller passes a loaded model. Default null. */
  model: string | null;
  /** Longer prompts (schema + question, tokens) are left-truncated. Default 512 (TRL's). */
  maxPromptLength: number;
  /** Wall-clock limit per SQL query when scoring, ms. Default 5000 (the executor's). */
  sqlTimeoutMs: number;
}

export const GRPO_DEFAULTS: GrpoConfig = Object.freeze({
  learningRate: 5e-6,
  lrSchedulerType: 'linear',
  warmupSteps: 0,
  weightDecay: 0.01,
  maxGradNorm: 1.0,
  numTrainEpochs: 2,
  maxSteps: -1,
  numGenerations: 4,
  maxCompletionLength: 256,
  temperature: 0.7,
  topP: 1.0,
  topK: 0,
  beta: 0.05,
  epsilon: 0.2,
  epsilonHigh: null,
  lossType: 'dapo',
  scaleRewards: 'group',
  numIterations: 1,
  maskTruncatedCompletions: false,
  rewardPreset: 'default',
  rewardWeights: Object.freeze({}) as Record<string, number>,
  seed: 42,
  loggingSteps: 1,
  evalSteps: 50,
  saveSteps: 50,
  outputDir: 'runs/grpo',
  promptsPerStep: 8,
  microBatchTokens: 8192,
  sharePrompts: true,
  klEstimator: 'k3',
  lora: Object.freeze({ rank: 16, alpha: 32, targets: Object.freeze([...LORA_TARGETS]) as LoraTarget[], path: null }) as GrpoLoraConfig,
  device: 'auto',
  ddpBackend: 'auto',
  sftSteps: 0,
  sftLearningRate: 1e-4,
  evalSamples: 200,
  evalVote: 0,
  importanceSamplingCorrection: false,
  importanceSamplingCap: 2,
  model: null,
  maxPromptLength: 512,
  sqlTimeoutMs: 5000,
}) as GrpoConfig;

/** An error in a configuration: `key` (YAML spelling), `value` and `file` are also fields for programs. */
export class ConfigError extends Sqlr1Error {
  readonly key: string;
  readonly value: unknown;
  readonly file: string;
  constructor(file: string, key: string, value: unknown, problem: string) {
    super('ERR_CONFIG', `${file}: ${key}${value === undefined ? '' : ` = ${show(value)}`}: ${problem}`);
    this.name = 'ConfigError';
    this.key = key;
    this.value = value;
    this.file = file;
  }
}

function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === null || typeof v !== 'object') return String(v);
  try {
    const s = JSON.stringify(v);
    return s.length > 80 ? `${s.slice(0, 77)}...` : s;
  } catch {
    return Object.prototype.toString.call(v);
  }
}

// One schema per key with the expectation that error messages quote.
// zod 4's z.number() rejects NaN and +-Infinity.
const num = (): z.ZodNumber => z.number();
const int = (min: number): z.ZodNumber => z.number().int().min(min);
interface Field { schema: z.ZodType; expect: string }
const TOP: Record<Exclude<keyof GrpoConfig, 'lora'>, Field> = {
  learningRate: { schema: num().gt(0), expect: 'a number > 0' },
  lrSchedulerType: { schema: z.enum(['constant', 'linear', 'cosine']), expect: "one of 'constant', 'linear', 'cosine'" },
  warmupSteps: { schema: int(0), expect: 'an integer >= 0' },
  weightDecay: { schema: num().min(0), expect: 'a number >= 0' },
  maxGradNorm: { schema: num().min(0), expect: 'a number >= 0 (0 disables clipping)' },
  numTrainEpochs: { schema: num().gt(0), expect: 'a number > 0' },
  maxSteps: { schema: z.number().int().refine((v) => v === -1 || v >= 1), expect: 'an integer >= 1, or -1 to derive it from num_train_epochs' },
  numGenerations: { schema: int(2), expect: 'an integer >= 2 (a group needs two completions to compare)' },
  maxCompletionLength: { schema: int(1), expect: 'an integer >= 1' },
  temperature: { schema: num().gt(0), expect: 'a number > 0' },
  topP: { schema: num().gt(0).max(1), expect: 'a number in (0, 1]' },
  topK: { schema: int(0), expect: 'an integer >= 0 (0 disables it)' },
  beta: { schema: num().min(0), expect: 'a number >= 0' },
  epsilon: { schema: num().min(0).lt(1), expect: 'a number in [0, 1)' },
  epsilonHigh: { schema: num().min(0).nullable(), expect: 'a number >= 0, or null for epsilon' },
  lossType: { schema: z.enum(['grpo', 'bnpo', 'dr_grpo', 'dapo']), expect: "one of 'grpo', 'bnpo', 'dr_grpo', 'dapo'" },
  scaleRewards: { schema: z.enum(['group', 'batch', 'none']), expect: "one of 'group', 'batch', 'none'" },
  numIterations: { schema: int(1), expect: 'an integer >= 1' },
  maskTruncatedCompletions: { schema: z.boolean(), expect: 'true or false' },
  rewardPreset: { schema: z.enum(['default', 'sql-r1', 'none']), expect: "one of 'default', 'sql-r1', 'none'" },
  rewardWeights: { schema: z.record(z.string(), num()), expect: 'a mapping from reward component names to finite numbers' },
  seed: { schema: z.number().int().min(0).max(2 ** 32 - 1), expect: 'an integer in [0, 2^32)' },
  loggingSteps: { schema: int(1), expect: 'an integer >= 1' },
  evalSteps: { schema: int(0), expect: 'an integer >= 0 (0: only at the end)' },
  saveSteps: { schema: int(0), expect: 'an integer >= 0 (0: only at the end)' },
  outputDir: { schema: z.string().min(1), expect: 'a non-empty path' },
  promptsPerStep: { schema: int(1), expect: 'an integer >= 1' },
  microBatchTokens: { schema: int(1), expect: 'an integer >= 1' },
  sharePrompts: { schema: z.boolean(), expect: 'true or false' },
  klEstimator: { schema: z.enum(['k1', 'k3']), expect: "one of 'k1', 'k3'" },
  device: { schema: z.enum(['auto', 'cpu', 'cuda']), expect: "one of 'auto', 'cpu', 'cuda'" },
  ddpBackend: { schema: z.enum(['auto', 'nccl', 'tcp']), expect: "one of 'auto', 'nccl', 'tcp'" },
  sftSteps: { schema: int(0), expect: 'an integer >= 0' },
  sftLearningRate: { schema: num().gt(0), expect: 'a number > 0' },
  evalSamples: { schema: int(0), expect: 'an integer >= 0 (0: the whole eval set)' },
  evalVote: { schema: int(0), expect: 'an integer >= 0 (0 or 1: greedy)' },
  importanceSamplingCorrection: { schema: z.boolean(), expect: 'true or false' },
  importanceSamplingCap: { schema: num().gt(0), expect: 'a number > 0' },
  model: { schema: z.string().min(1).nullable(), expect: 'a GGUF path, or null' },
  maxPromptLength: { schema: int(1), expect: 'an integer >= 1' },
  sqlTimeoutMs: { schema: int(1), expect: 'an integer >= 1 (milliseconds)' },
};
const LORA: Record<keyof GrpoLoraConfig, Field> = {
  rank: { schema: int(1), expect: 'an integer >= 1' },
  alpha: { schema: num().gt(0), expect: 'a number > 0' },
  targets: {
    schema: z.array(z.enum(LORA_TARGETS)).min(1).refine((a) => new Set(a).size === a.length),
    expect: `a non-empty list of distinct layers among ${LORA_TARGETS.join(', ')}`,
  },
  path: { schema: z.string().min(1).nullable(), expect: 'an adapter path, or null' },
};

/** YAML spelling of a camelCase key. */
export function snakeCase(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}
function camelCase(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** Every YAML key (snake_case), nested ones as `lora.rank`: for documentation and completion. */
export const CONFIG_KEYS: readonly string[] = [
  ...Object.keys(TOP).map(snakeCase),
  ...Object.keys(LORA).map((k) => `lora.${snakeCase(k)}`),
].sort();

/** Levenshtein distance (small strings: the two-row dynamic program). */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

/** The closest of `candidates` to `key` (case and _ insensitive), when it is close enough to be a typo. */
export function suggestKey(key: string, candidates: readonly string[]): string | null {
  const norm = (s: string) => s.toLowerCase().replace(/[_\-.]/g, '');
  let best: string | null = null, bestD = Infinity;
  for (const c of candidates) {
    const d = editDistance(norm(key), norm(c));
    if (d < bestD) { bestD = d; best = c; }
  }
  return best !== null && bestD <= Math.max(2, Math.floor(norm(key).length / 3)) ? best : null;
}

function unknownKey(file: string, key: string, value: unknown, candidates: readonly string[]): never {
  const hint = suggestKey(key, candidates);
  throw new ConfigError(file, key, value, `unknown key${hint ? `; did you mean '${hint}'?` : ` (keys: ${candidates.join(', ')})`}`);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

/** Maps snake_case or camelCase keys of `input` onto `fields`, with unknown keys and double spellings rejected. */
function normalizeKeys(input: Record<string, unknown>, fields: Record<string, Field>, fileOf: (raw: string) => string, prefix: string): Map<string, unknown> {
  const out = new Map<string, unknown>();
  const spelled = new Map<string, string>();
  const yamlNames = Object.keys(fields).map((k) => prefix + snakeCase(k));
  for (const [raw, value] of Object.entries(input)) {
    if (value === undefined) continue;                       // an options object's undefined means "not given"
    const camel = camelCase(raw);
    if (!Object.hasOwn(fields, camel) || (raw !== camel && raw !== snakeCase(camel))) unknownKey(fileOf(raw), prefix + raw, value, yamlNames);
    const before = spelled.get(camel);
    if (before !== undefined) throw new ConfigError(fileOf(raw), prefix + raw, value, `given twice (also as '${prefix}${before}')`);
    spelled.set(camel, raw);
    out.set(camel, value);
  }
  return out;
}

function check(field: Field, value: unknown, file: string, key: string): unknown {
  const r = field.schema.safeParse(value);
  if (!r.success) {
    const got = typeof value === 'number' && Number.isFinite(value)
      ? (field.expect.includes('integer') && !Number.isInteger(value) ? 'a fractional number' : 'a value outside that range')
      : describeType(value);
    const options = field.schema instanceof z.ZodEnum ? (field.schema.options as string[]) : [];
    const hint = typeof value === 'string' && options.length > 0 ? suggestKey(value, options) : null;
    throw new ConfigError(file, key, value, `expected ${field.expect}, received ${got}${hint ? `; did you mean '${hint}'?` : ''}`);
  }
  return r.data;
}

function describeType(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'number') return Number.isFinite(v) ? 'a number' : 'a non-finite number';
  if (typeof v === 'string') return 'a string';
  if (typeof v === 'boolean') return 'a boolean';
  if (typeof v === 'object') return 'a mapping';
  return typeof v;
}

export interface ResolveConfigOptions {
  /**
   * Names of the user's own reward functions, which `reward_weights` may name besides the preset's components.
   * Default none.
   */
  rewardComponents?: readonly string[];
  /** Where each key came from, for messages (e.g. overrides): key (as spelled in input) -> source. */
  sources?: ReadonlyMap<string, string>;
}

/**
 * Fills defaults into `input` (snake_case or camelCase keys; `lora` a nested mapping) and validates every value.
 * Throws {@link ConfigError} (ERR_CONFIG) naming the key, the value and `source` (default '<options>').
 */
export function resolveConfig(input: Record<string, unknown>, source = '<options>', options: ResolveConfigOptions = {}): GrpoConfig {
  if (input === null || input === undefined) input = {};
  if (!isPlainObject(input)) throw new ConfigError(source, '(top level)', input, `expected a mapping of config keys, received ${describeType(input)}`);
  const src = (raw: string): string => options.sources?.get(raw) ?? source;
  const spelledAs = new Map<string, string>();
  for (const raw of Object.keys(input)) spelledAs.set(camelCase(raw), raw);
  const top = normalizeKeys(input, { ...TOP, lora: { schema: z.any(), expect: '' } }, src, '');
  const config: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(TOP) as Array<[keyof typeof TOP, Field]>) {
    const raw = spelledAs.get(key) ?? snakeCase(key);
    config[key] = top.has(key) ? check(field, top.get(key), src(raw), snakeCase(key)) : structuredClone(GRPO_DEFAULTS[key]);
  }
  const loraIn = top.get('lora');
  let lora: GrpoLoraConfig = structuredClone(GRPO_DEFAULTS.lora);
  if (loraIn !== undefined) {
    const file = src(spelledAs.get('lora') ?? 'lora');
    if (typeof loraIn === 'string') lora = { ...lora, path: check(LORA.path, loraIn, file, 'lora') as string };
    else if (!isPlainObject(loraIn)) throw new ConfigError(file, 'lora', loraIn, `expected a mapping { rank, alpha, targets, path } or an adapter path, received ${describeType(loraIn)}`);
    else {
      // A nested key's source: its own (a dotted override), else the lora key's.
      const nestedSrc = (raw: string): string => options.sources?.get(`lora.${camelCase(raw)}`) ?? file;
      const li = normalizeKeys(loraIn, LORA, nestedSrc, 'lora.');
      for (const [key, field] of Object.entries(LORA) as Array<[keyof GrpoLoraConfig, Field]>) {
        if (li.has(key)) (lora as unknown as Record<string, unknown>)[key] = check(field, li.get(key), nestedSrc(key), `lora.${snakeCase(key)}`);
      }
    }
  }
  config['lora'] = lora;
  const c = config as unknown as GrpoConfig;

  // Reward weights must name a component that exists: a misspelled weight would silently weigh nothing.
  const presetNames = c.rewardPreset === 'default' ? defaultPreset().map((x) => x.name) : c.rewardPreset === 'sql-r1' ? sqlR1Preset().map((x) => x.name) : [];
  const known = [...presetNames, ...(options.rewardComponents ?? [])];
  for (const [name, w] of Object.entries(c.rewardWeights)) {
    if (!known.includes(name)) {
      const file = src(spelledAs.get('rewardWeights') ?? 'reward_weights');
      const hint = suggestKey(name, known);
      throw new ConfigError(file, `reward_weights.${name}`, w, `not a component of reward preset '${c.rewardPreset}'${hint ? `; did you mean '${hint}'?` : ` (components: ${known.join(', ') || 'none'})`}`);
    }
  }
  return c;
}

/** Sets `obj[path]` for a dotted path (`lora.rank`), creating mappings on the way. */
function setPath(obj: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split('.');
  let o = obj;
  for (const p of parts.slice(0, -1)) {
    const next = o[p];
    if (!isPlainObject(next)) o[p] = {};
    o = o[p] as Record<string, unknown>;
  }
  o[parts[parts.length - 1]!] = value;
}

/**
 * Parses a command-line override `key=value` (`--set lr_scheduler_type=cosine`, `--set lora.rank=8`): the value
 * is read as a YAML scalar or flow collection, so numbers, booleans, null and `[q, v]` keep their types.
 */
export function parseOverride(text: string): [string, unknown] {
  const eq = text.indexOf('=');
  if (eq <= 0) throw new ConfigError('--set', text, undefined, 'expected key=value');
  const key = text.slice(0, eq).trim();
  const raw = text.slice(eq + 1);
  try {
    return [key, raw.trim() === '' ? '' : parseYaml(raw)];
  } catch (e) {
    throw new ConfigError('--set', key, raw, `the value is not valid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
}

/**
 * Reads a YAML config, applies `overrides` (keys as in the file, snake_case or camelCase; dotted for nested
 * keys: `{ 'lora.rank': 8 }`) and resolves it (see {@link resolveConfig}). Errors are ERR_CONFIG naming the key,
 * the value and the file (or "<file> (overrides)" for an override).
 */
export async function loadConfig(path: string, options: { overrides?: Record<string, unknown>; rewardComponents?: readonly string[] } = {}): Promise<GrpoConfig> {
  if (typeof path !== 'string' || path === '') throw new ConfigError('<loadConfig>', 'path', path, 'expected the path of a YAML file');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new ConfigError(path, '(file)', undefined, `cannot read the config file: ${(e as Error).message}`);
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0] as YAMLParseError;
    const where = e.linePos?.[0] ? ` at line ${e.linePos[0].line}, column ${e.linePos[0].col}` : '';
    throw new ConfigError(path, '(yaml)', undefined, `invalid YAML${where}: ${e.message.split('\n')[0]}`);
  }
  const data = doc.toJS() as unknown;
  if (data !== null && data !== undefined && !isPlainObject(data)) {
    throw new ConfigError(path, '(top level)', data, `expected a mapping of config keys, received ${describeType(data)}`);
  }
  const input: Record<string, unknown> = { ...((data as Record<string, unknown> | null) ?? {}) };
  const sources = new Map<string, string>();
  const overrideSource = `${path} (overrides)`;
  for (const [key, value] of Object.entries(options.overrides ?? {})) {
    if (key.includes('.')) {
      const [head, ...rest] = key.split('.');
      const camelHead = camelCase(head!);
      // Overriding a nested key keeps the file's other nested keys.
      const existing = Object.keys(input).find((k) => camelCase(k) === camelHead) ?? head!;
      if (!isPlainObject(input[existing])) input[existing] = typeof input[existing] === 'string' && camelHead === 'lora' ? { path: input[existing] } : {};
      input[existing] = { ...(input[existing] as Record<string, unknown>) };
      setPath(input[existing] as Record<string, unknown>, rest.join('.'), value);
      sources.set(`lora.${camelCase(rest.join('.'))}`, overrideSource);
    } else {
      // An override replaces the file's value whichever spelling either used.
      for (const k of Object.keys(input)) if (camelCase(k) === camelCase(key)) delete input[k];
      input[key] = value;
      sources.set(key, overrideSource);
    }
  }
  return resolveConfig(input, path, { sources, rewardComponents: options.rewardComponents });
}

const DOCS: Record<string, string> = {
  learning_rate: 'AdamW peak learning rate',
  lr_scheduler_type: 'constant | linear | cosine, after warmup',
  warmup_steps: 'linear warmup from 0, optimizer steps',
  weight_decay: 'AdamW decoupled weight decay',
  max_grad_norm: 'gradient L2 norm clip (0: off)',
  num_train_epochs: 'passes over the training questions',
  max_steps: 'optimizer steps (-1: from num_train_epochs)',
  num_generations: 'completions per prompt (group size K)',
  max_completion_length: 'most new tokens per completion',
  temperature: 'sampling temperature',
  top_p: 'nucleus sampling (1: off)',
  top_k: 'top-k sampling (0: off)',
  beta: 'KL coefficient (0: no reference pass)',
  epsilon: 'clip range below: 1 - epsilon',
  epsilon_high: 'clip range above: 1 + epsilon_high (null: epsilon)',
  loss_type: 'grpo | bnpo | dr_grpo | dapo',
  scale_rewards: 'group | batch | none',
  num_iterations: 'updates per batch of rollouts',
  mask_truncated_completions: 'no gradient for completions cut at max length',
  reward_preset: 'default | sql-r1 | none',
  reward_weights: 'weight per reward component (absent: 1)',
  seed: 'sampling, data order, adapter init',
  logging_steps: 'metrics every N steps',
  eval_steps: 'evaluation every N steps (0: at the end)',
  save_steps: 'checkpoint every N steps (0: at the end)',
  output_dir: 'the run directory',
  prompts_per_step: 'questions per optimizer step',
  micro_batch_tokens: 'most tokens per micro-batch',
  share_prompts: "each group's prompt once in the reference and policy passes",
  kl_estimator: 'k3 | k1',
  lora: 'the trained adapter',
  device: 'auto | cpu | cuda',
  ddp_backend: 'gradients between ranks: auto | nccl | tcp',
  sft_steps: 'supervised warm-up steps (0: none)',
  sft_learning_rate: 'warm-up learning rate',
  eval_samples: 'questions per evaluation (0: all)',
  eval_vote: 'samples voted per question at eval (0/1: greedy)',
  importance_sampling_correction: 'truncated importance-sampling weight on the surrogate',
  importance_sampling_cap: 'cap of that weight',
  model: 'GGUF path of the base model',
  max_prompt_length: 'prompt tokens kept (left-truncated)',
  sql_timeout_ms: 'limit per SQL query when scoring, ms',
  'lora.rank': 'LoRA rank r',
  'lora.alpha': 'scale alpha / r',
  'lora.targets': 'adapted linear layers',
  'lora.path': 'adapter to start from (null: fresh)',
};

/**
 * The resolved config as YAML (snake_case keys, every value written out, a short comment on each): the run
 * directory's config.yaml. loadConfig on the text gives back the same config.
 */
export function configToYaml(config: GrpoConfig): string {
  const obj: Record<string, unknown> = {};
  for (const key of Object.keys(TOP) as Array<keyof typeof TOP>) obj[snakeCase(key)] = config[key];
  obj['lora'] = {
    rank: config.lora.rank, alpha: config.lora.alpha, targets: [...config.lora.targets], path: config.lora.path,
  };
  const doc = new Document(obj);
  if (isMap(doc.contents)) {
    for (const pair of doc.contents.items) {
      const k = isScalar(pair.key) ? String(pair.key.value) : '';
      if (isScalar(pair.value) || isSeq(pair.value)) (pair.value as { comment?: string }).comment = ` ${DOCS[k] ?? ''}`;
      else if (isMap(pair.value)) {
        if (k === 'lora' && isScalar(pair.key)) pair.key.comment = ` ${DOCS['lora']}`;
        for (const inner of pair.value.items) {
          const ik = isScalar(inner.key) ? String(inner.key.value) : '';
          if (isSeq(inner.value)) inner.value.flow = true;
          const doc = DOCS[`${k}.${ik}`];
          if (doc && inner.value && (isScalar(inner.value) || isSeq(inner.value))) (inner.value as { comment?: string }).comment = ` ${doc}`;
        }
      }
    }
  }
  return `# Resolved sqlr1-native GRPO config: every key, defaults written out.\n${doc.toString({ lineWidth: 0 })}`;
}
