import type { SqlExecutor, SqlResult } from '../sql/executor.js';
import type { ExtractedSql } from '../sql/extract.js';

/** One completion to score, with what it is scored against. */
export interface RewardSample {
  /** The model's answer text. */
  completion: string;
  /** Gold SQL of the question. */
  goldSql: string;
  /** SQLite file of the question's database. */
  dbPath: string;
  /** The prompt the completion answers (free form; for user reward functions). */
  prompt?: unknown;
  /** Anything else user reward functions need (question, database id, token counts...). */
  extras?: Readonly<Record<string, unknown>>;
}

/** What a reward function sees: the sample plus the extraction and execution results, computed once. */
export interface RewardContext extends RewardSample {
  /** The SQL found in the completion and how it was found. */
  extracted: ExtractedSql;
  /** Result of the extracted SQL; null when no SQL was found. */
  pred: SqlResult | null;
  /** Result of the gold SQL (cached per database and query). */
  gold: SqlResult;
  /**
   * The gold SQL failed to execute: the sample cannot be scored. Components that need execution are not called
   * (they are null) and the sample's total is null; only components with `needsExecution: false` see such a context.
   */
  goldError: boolean;
  /** Spider execution match of the prediction with the gold result. */
  correct: boolean;
  executor: SqlExecutor;
}

/**
 * A reward function, after TRL's protocol: a number, or null when it does not apply to this sample (a null is
 * left out of that component's mean and adds nothing to the total). May be async.
 */
export type RewardFunction = (ctx: RewardContext) => number | null | Promise<number | null>;

/** A named reward function. The name is the logging key `rewards/<name>`; keep it stable. */
export interface RewardComponent {
  name: string;
  fn: RewardFunction;
  /** Multiplies the value in the total. Default 1. */
  weight?: number;
  /**
   * The value depends on executing SQL (the prediction's or the gold's). When the gold SQL fails to execute,
   * such components are null for that sample and are not called. Default true; set false for components that
   * look at the text only (format, length), so they are still logged.
   */
  needsExecution?: boolean;
}

/** The score of one sample. */
export interface RewardScore {
  /**
   * Sum over components of weight × value (null values add nothing); null when the gold SQL failed to execute
   * (no reward: the sample gets no gradient and is never scored as the model's failure).
   */
  total: number | null;
  /** The gold SQL failed to execute (see `total`). */
  goldError: boolean;
  /** Each component's value before weighting, by name; null where it does not apply. */
  components: Record<string, number | null>;
  /** Spider execution match (false on a gold error). */
  correct: boolean;
  extracted: ExtractedSql;
  pred: SqlResult | null;
}

/** Scores of a batch (a samples × components matrix) and the metrics to log for it. */
export interface RewardBatch {
  scores: RewardScore[];
  /** One total per sample; null where the gold SQL failed (see RewardScore.total). */
  totals: Array<number | null>;
  /** Per sample: the gold SQL failed to execute. */
  goldError: boolean[];
  /** Column of the matrix per component name. */
  components: Record<string, Array<number | null>>;
  /**
   * Over the samples with a reward (gold errors left out): `reward` and `reward_std` (mean and population
   * standard deviation of the totals) and `frac_correct` (absent when no sample has a reward); over all samples:
   * `frac_gold_error` and `frac_extracted/<reason>` for each extraction reason; `rewards/<name>/mean` and
   * `rewards/<name>/std` over the samples where the component applies (absent when it applies to none).
   */
  metrics: Record<string, number>;
}
