/**
 * The data side of sqlr1: the SQL sandbox and Spider execution match, rewards, Spider data, and evaluation.
 */
export {
  SqlExecutor,
  type RunOptions,
  type SqlErrorCode,
  type SqlExecutorOptions,
  type SqlFailure,
  type SqlResult,
  type SqlRow,
  type SqlSuccess,
  type SqlValue,
} from './sql/executor.js';
export { checkReadOnlySql, type GuardResult } from './sql/guard.js';
export {
  compareResults,
  compareResultsBird,
  EXEC_METRICS,
  orderMatters,
  resultsMatch,
  valueKey,
  type ExecMetric,
} from './sql/compare.js';
export { execMatch, normalizeForExecution, type ExecMatch, type ExecMatchOptions } from './sql/exec-match.js';
export { extractSql, hasFencedSql, type ExtractedSql, type ExtractionReason } from './sql/extract.js';
export { extractIdentifiers, jaccard, lexIdentifiers } from './sql/identifiers.js';
export { majorityVote, type VoteResult } from './sql/vote.js';

export * as rewards from './rewards/index.js';
export {
  Reward,
  createReward,
  defaultPreset,
  sqlR1Preset,
  type RewardBatch,
  type RewardComponent,
  type RewardContext,
  type RewardFunction,
  type RewardOptions,
  type RewardSample,
  type RewardScore,
} from './rewards/index.js';

export {
  SpiderDataset,
  shuffleWithSeed,
  spiderDbPath,
  type SpiderExample,
  type SpiderLoadOptions,
  type SpiderTables,
} from './spider/dataset.js';
export { serializeSchema, type SchemaOptions } from './spider/schema.js';
export {
  buildPrompt,
  DEFAULT_SYSTEM_PROMPT,
  PromptRenderer,
  type ChatEncoder,
  type PromptInput,
  type PromptMessage,
  type PromptOptions,
  type PromptRendererOptions,
} from './spider/prompt.js';
export { classifyHardness, hardnessOfParsed, HARDNESS_LEVELS, type Hardness, type SpiderSql } from './spider/hardness.js';

export {
  EVAL_LEVELS,
  evalSql,
  formatScoreTable,
  readGoldFile,
  readPredFile,
  type EvalExample,
  type EvalLevel,
  type EvalSqlOptions,
  type EvalSqlReport,
  type GoldEntry,
} from './eval/eval-sql.js';
