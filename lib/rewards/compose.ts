import { Sqlr1Error } from '../errors.js';
import { execMatch, normalizeForExecution } from '../sql/exec-match.js';
import type { SqlExecutor } from '../sql/executor.js';
import { extractSql, type ExtractionReason } from '../sql/extract.js';
import { defaultPreset, sqlR1Preset } from './presets.js';
import type { RewardBatch, RewardComponent, RewardContext, RewardSample, RewardScore } from './types.js';

export type PresetName = 'default' | 'sql-r1' | 'none';

export interface RewardOptions {
  /** Runs predicted and gold SQL. */
  executor: SqlExecutor;
  /** Built-in components: 'default' (the project's table), 'sql-r1' (SQL-R1's scheme) or 'none'. Default 'default'. */
  preset?: PresetName | RewardComponent[];
  /** User reward functions, scored after the preset's components. Default none. */
  functions?: RewardComponent[];
  /** Weight by component name, overriding a component's own `weight`; unnamed components weigh 1. */
  weights?: Readonly<Record<string, number>>;
  /** Keep DISTINCT when executing (see normalizeForExecution). Default false, as Spider's evaluator. */
  keepDistinct?: boolean;
}

const REASONS: readonly ExtractionReason[] = ['fenced_sql', 'fenced', 'bare', 'none'];
const PRESETS: Record<PresetName, () => RewardComponent[]> = {
  default: () => defaultPreset(),
  'sql-r1': () => sqlR1Preset(),
  none: () => [],
};

/** A composed reward: built-in and user components with weights, scored per sample or per batch. */
export class Reward {
  /** Component names in scoring order (the keys of `components` and of `rewards/<name>` metrics). */
  readonly names: readonly string[];
  readonly weights: Readonly<Record<string, number>>;
  readonly #components: RewardComponent[];
  readonly #executor: SqlExecutor;
  readonly #keepDistinct: boolean;

  constructor(options: RewardOptions) {
    if (!options || typeof options.executor?.run !== 'function') {
      throw new Sqlr1Error('ERR_INVALID_ARG', 'Reward: expected options.executor, an SqlExecutor');
    }
    const preset = options.preset ?? 'default';
    // Object.hasOwn: a preset name like 'toString' must not find Object.prototype's.
    const base = Array.isArray(preset) ? preset : Object.hasOwn(PRESETS, preset) ? PRESETS[preset]() : null;
    if (!base) {
      const expected = "'default', 'sql-r1', 'none' or a component list";
      throw new Sqlr1Error('ERR_INVALID_ARG', `Reward: preset must be ${expected}, received ${String(preset)}`);
    }
    const components = [...base, ...(options.functions ?? [])];
    const weights: Record<string, number> = {};
    for (const c of components) {
      if (typeof c?.name !== 'string' || c.name === '' || typeof c.fn !== 'function') {
        throw new Sqlr1Error('ERR_INVALID_ARG', 'Reward: each component needs a non-empty name and a function fn');
      }
      if (c.name in weights) throw new Sqlr1Error('ERR_INVALID_ARG', `Reward: two components are named "${c.name}"`);
      weights[c.name] = checkWeight(c.name, options.weights?.[c.name] ?? c.weight ?? 1);
    }
    for (const name of Object.keys(options.weights ?? {})) {
      if (!(name in weights)) {
        const known = Object.keys(weights).join(', ');
        throw new Sqlr1Error('ERR_INVALID_ARG', `Reward: weights names "${name}", which is not a component (components: ${known})`);
      }
    }
    this.names = components.map((c) => c.name);
    this.weights = weights;
    this.#components = components;
    this.#executor = options.executor;
    this.#keepDistinct = options.keepDistinct ?? false;
  }

  /**
   * Scores one completion: extracts and runs its SQL once, then calls every component. When the gold SQL fails
   * to execute, the sample has no reward: the total is null, components that need execution are null (not
   * called), and `goldError` is true.
   */
  async score(sample: RewardSample): Promise<RewardScore> {
    const extracted = extractSql(sample.completion);
    let ctx: RewardContext;
    if (extracted.sql === null) {
      // The same normalization as execMatch applies to the gold side, so both paths share one cache entry.
      const gold = await this.#executor.run(sample.dbPath, normalizeForExecution(sample.goldSql, { keepDistinct: this.#keepDistinct }), { cache: true });
      ctx = { ...sample, extracted, pred: null, gold, correct: false, goldError: !gold.ok, executor: this.#executor };
    } else {
      const m = await execMatch(this.#executor, sample.dbPath, extracted.sql, sample.goldSql, { keepDistinct: this.#keepDistinct });
      ctx = { ...sample, extracted, pred: m.pred, gold: m.gold, correct: m.correct, goldError: !m.gold.ok, executor: this.#executor };
    }
    const goldError = ctx.goldError;
    const values = await Promise.all(this.#components.map((c) => (goldError && c.needsExecution !== false ? null : c.fn(ctx))));
    const components: Record<string, number | null> = {};
    let total = 0;
    this.#components.forEach((c, i) => {
      const v = values[i];
      if (v !== null && (typeof v !== 'number' || !Number.isFinite(v))) {
        throw new Sqlr1Error('ERR_INVALID_ARG', `reward function "${c.name}" returned ${String(v)}; expected a finite number or null`);
      }
      components[c.name] = v ?? null;
      if (v !== null && v !== undefined) total += (this.weights[c.name] as number) * v;
    });
    return { total: goldError ? null : total, goldError, components, correct: ctx.correct, extracted, pred: ctx.pred };
  }

  /** Scores a batch (samples × components) and computes its metrics. */
  async scoreBatch(samples: readonly RewardSample[]): Promise<RewardBatch> {
    const scores = await Promise.all(samples.map((s) => this.score(s)));
    const totals = scores.map((s) => s.total);
    const goldError = scores.map((s) => s.goldError);
    const components: Record<string, Array<number | null>> = {};
    for (const name of this.names) components[name] = scores.map((s) => s.components[name] ?? null);
    const metrics: Record<string, number> = {};
    const scored = scores.filter((s) => !s.goldError);
    if (scored.length > 0) {
      const valid = scored.map((s) => s.total as number);
      metrics['reward'] = mean(valid);
      metrics['reward_std'] = std(valid);
      metrics['frac_correct'] = scored.filter((s) => s.correct).length / scored.length;
    }
    if (scores.length > 0) {
      metrics['frac_gold_error'] = (scores.length - scored.length) / scores.length;
      for (const r of REASONS) metrics[`frac_extracted/${r}`] = scores.filter((s) => s.extracted.reason === r).length / scores.length;
    }
    for (const name of this.names) {
      const applicable = (components[name] as Array<number | null>).filter((v): v is number => v !== null);
      if (applicable.length === 0) continue;
      metrics[`rewards/${name}/mean`] = mean(applicable);
      metrics[`rewards/${name}/std`] = std(applicable);
    }
    return { scores, totals, goldError, components, metrics };
  }
}

function checkWeight(name: string, w: unknown): number {
  if (typeof w !== 'number' || !Number.isFinite(w)) {
    throw new Sqlr1Error('ERR_INVALID_ARG', `Reward: weight of "${name}" must be a finite number, received ${String(w)}`);
  }
  return w;
}

const mean = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;

function std(xs: readonly number[]): number {
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / xs.length);
}

/** Builds a {@link Reward}; see {@link RewardOptions}. */
export function createReward(options: RewardOptions): Reward {
  return new Reward(options);
}
