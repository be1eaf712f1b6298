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
}

/** The score of one sample. */
export interface RewardScore {
  /** Sum over components of weight × value (null values add nothing). */
  total: number;
  /** Each component's value before weighting, by name; null where it does not apply. */
  components: Record<string, number | null>;
  /** Spider execution match. */
  correct: boolean;
  extracted: ExtractedSql;
  pred: SqlResult | null;
}

/** Scores of a batch (a samples × components matrix) and the metrics to log for it. */
export interface RewardBatch {
  scores: RewardScore[];
  totals: number[];
  /** Column of the matrix per component name. */
  components: Record<string, Array<number | null>>;
  /**
   * `reward` and `reward_std` (mean and population standard deviation of the totals), `rewards/<name>/mean`
   * and `rewards/<name>/std` over the samples where the component applies (absent when it applies to none),
   * `frac_correct`, and `frac_extracted/<reason>` for each extraction reason.
   */
  metrics: Record<string, number>;
}
