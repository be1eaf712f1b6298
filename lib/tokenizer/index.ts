export {
  Tokenizer,
  StreamDecoder,
  TokenAttr,
  vocabFromMetadata,
  type EncodeOptions,
  type DecodeOptions,
  type TokenizerVocab,
} from './tokenizer.js';
export { SUPPORTED_PRE_TOKENIZERS } from './pretokenize.js';
export {
  renderChat,
  renderChatForTokenizer,
  CHATML_TEMPLATE,
  type ChatMessage,
  type RenderChatOptions,
} from './chat.js';
