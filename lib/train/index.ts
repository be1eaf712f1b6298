/**
 * Training building blocks: lazy tensor expressions with autodiff on ggml, parameters on a device, AdamW, and
 * the GRPO loss, and the LoRA trainer (log-probs and backward through a frozen base model).
 */
export { Tensor, backward, evaluate, broadcastsTo, type Shape, type TensorOp, type ConstantOptions, type RunOptions as TensorRunOptions, type BackwardOptions, type BackwardResult } from './tensor.js';
export { ParamStore, AdamW, loraParams, type ParamStoreOptions, type AdamwStepOptions, type AdamWOptions, type AdamWStepResult } from './params.js';
export { grpoLoss, GRPO_LOSS_TYPES, type GrpoLossOptions, type GrpoLossTensors, type GrpoLossType, type GrpoLossNormalizer, type KlEstimator } from './grpo-loss.js';
export { LoraTrainer, packedTokens, type LoraTrainerOptions, type TrainBatch, type TrainBatchInput, type LogprobOptions, type TrainCompute } from './lora-trainer.js';
