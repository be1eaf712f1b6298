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
export * from './train/index.js';
