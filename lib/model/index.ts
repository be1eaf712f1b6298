export { loadModel, Model, ModelContext, type LoadModelOptions, type ContextOptions } from './model.js';
export { generate, seedFor, type GenerateOptions, type SamplingOptions, type Completion, type FinishReason, type GenerateStats } from './generate.js';
export { makeModel, MODEL_SHAPES, MODEL_TYPES, type MakeModelOptions, type ModelShape, type ModelType } from './make-model.js';
export { createLora, loadLora, LoraAdapter, LORA_TARGETS, type LoraOptions, type LoraTarget } from './lora.js';
export { teacherForcedLogprobs, type TeacherForcedOptions } from './logprobs.js';
