/** GRPO: configuration, advantages, schedule, rollouts, the supervised warm-up, checkpoints, metrics, the trainer. */
export * from './config.js';
export * from './advantages.js';
export * from './schedule.js';
export { GrpoTrainer, type GrpoTrainerOptions, type GrpoExample, type GrpoDataset, type GrpoCallbacks, type PromptSource, type TrainResult } from './trainer.js';
export { sampleRollouts, microBatches, derivedSeed, ROLLOUT_STOP, type Rollout, type RolloutOptions } from './rollout.js';
export { formatAnswer, answerTokens, endOfTurnId, supervisedStep, type SftExample, type SftStepResult } from './sft.js';
export { readTrainerState, listCheckpoints, checkpointDir, TRAINER_STATE_FILE, ADAPTER_FILE, OPTIMIZER_FILE, type TrainerState } from './checkpoint.js';
export { RunLog, Progress, METRICS_FILE, COMPLETIONS_FILE, type Metrics, type CompletionRecord } from './metrics.js';
