/**
 * The one error class of the library. `code` is stable and machine-readable; the message says what was
 * expected and what was received.
 */
export type ErrorCode =
  | 'ERR_GGUF_INVALID'
  | 'ERR_GGUF_NOT_FOUND'
  | 'ERR_UNSUPPORTED_ARCH'
  | 'ERR_UNSUPPORTED_TYPE'
  | 'ERR_TOKEN_RANGE'
  | 'ERR_CONTEXT_OVERFLOW'
  | 'ERR_NO_CUDA'
  | 'ERR_NATIVE_LOAD'
  | 'ERR_DISPOSED'
  | 'ERR_INVALID_ARG'
  | 'ERR_INVALID_STATE'
  | 'ERR_SQL_TIMEOUT'
  | 'ERR_SQL_REJECTED'
  | 'ERR_SQL_ERROR'
  | 'ERR_SQL_LIMIT'
  | 'ERR_DB_NOT_FOUND'
  | 'ERR_DATA'
  | 'ERR_CONFIG'
  | 'ERR_TOKENIZER'
  | 'ERR_TEMPLATE'
  | 'ERR_ADAPTER_INVALID'
  | 'ERR_STATE_INVALID'
  | 'ERR_ABORTED'
  | 'ERR_OUT_OF_MEMORY'
  | 'ERR_DISTRIBUTED'
  | 'ERR_NCCL'
  | 'ERR_INTERNAL';

export class Sqlr1Error extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'Sqlr1Error';
    this.code = code;
  }
}

/** True when `e` is a Sqlr1Error (optionally with the given code). */
export function isSqlr1Error(e: unknown, code?: ErrorCode): e is Sqlr1Error {
  return e instanceof Sqlr1Error && (code === undefined || e.code === code);
}
