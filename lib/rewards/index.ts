/** Rewards for GRPO on text-to-SQL: presets, composition with weights, and the protocol for user functions. */
export { Reward, createReward, type PresetName, type RewardOptions } from './compose.js';
export { defaultPreset, reasoningText, sqlR1Preset, type DefaultPresetOptions, type SqlR1PresetOptions } from './presets.js';
export type { RewardBatch, RewardComponent, RewardContext, RewardFunction, RewardSample, RewardScore } from './types.js';
