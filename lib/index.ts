/**
 * sqlr1-native: GRPO reinforcement learning for text-to-SQL on ggml (CPU and CUDA), from Node.js.
 */
export { Sqlr1Error, isSqlr1Error, type ErrorCode } from './errors.js';
export * from './model/index.js';
export { Tokenizer, StreamDecoder, renderChat, renderChatForTokenizer, type ChatMessage } from './tokenizer/index.js';
export { readGgufMetadata, type GgufMetadata } from './gguf/reader.js';
export { probeCuda, type DeviceRequest, type Device } from './native/binding.js';
export { createToyDatabase, TOY_EXAMPLES, type ToyExample } from './demo/toy-db.js';
export * from './data.js';
export {
  evaluateModel, evalMetrics, scoreQuestion, formatEvaluation, formatPredictions, formatGold, NO_SQL_PLACEHOLDER,
  type EvalItem, type EvaluateOptions, type EvaluationReport, type EvalEntry, type EvalCandidate, type LevelScore, type Verdict,
} from './eval/evaluate.js';
export { writeReport, readRun, renderReport, type WriteReportOptions, type ReportOptions, type RunData } from './report/index.js';
export * from './train/index.js';
export { GRPO_DEFAULTS, CONFIG_KEYS, ConfigError, resolveConfig, loadConfig, configToYaml, parseOverride, type GrpoConfig, type GrpoLoraConfig, type ResolveConfigOptions } from './grpo/config.js';
export { computeAdvantages, ADVANTAGE_STD_EPS, type AdvantageResult, type ScaleRewards } from './grpo/advantages.js';
export { learningRateAt, type LrSchedulerType, type ScheduleOptions } from './grpo/schedule.js';
export { GrpoTrainer, readTrainerState, listCheckpoints, formatAnswer, answerTokens, type GrpoTrainerOptions, type GrpoExample, type GrpoDataset, type GrpoCallbacks, type PromptSource, type TrainResult, type TrainerState, type Metrics, type CompletionRecord } from './grpo/index.js';
export { ProcessGroup, type GroupOptions, type TensorTransport } from './distributed/group.js';
export { connectNccl, chooseTransport, type NcclOptions } from './distributed/nccl.js';
export { distEnvFrom, shardRange, pinLocalDevice, type DistEnv } from './distributed/env.js';
export { runDemo, DEMO_CONFIG, type DemoOptions, type DemoReport } from './demo/demo.js';
