/**
 * Chat prompts rendered through the model's `tokenizer.chat_template` (a Jinja template, evaluated by
 * @huggingface/jinja), with a built-in ChatML template for vocabularies that have none. The rendered text holds
 * special tokens as text (`<|im_start|>`), so encode it with `{ parseSpecial: true }`.
 */
import { Template } from '@huggingface/jinja';
import { Sqlr1Error } from '../errors.js';
import type { Tokenizer } from './tokenizer.js';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface RenderChatOptions {
  /** Append the assistant turn header so the model writes the reply. Default true. */
  addGenerationPrompt?: boolean;
  /** Value of `bos_token` in the template. Default ''. */
  bosToken?: string;
  /** Value of `eos_token` in the template. Default ''. */
  eosToken?: string;
  /**
   * Extra template variables (e.g. `tools`). They cannot override messages, bos_token, eos_token or
   * add_generation_prompt; a name of a Jinja global (`range`, `raise_exception`, `true`, ...) fails with ERR_TEMPLATE.
   */
  variables?: Record<string, unknown>;
}

/** ChatML, used when a vocabulary has no `tokenizer.chat_template`. No default system message is added. */
export const CHATML_TEMPLATE =
  "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}" +
  "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}";

const compiled = new Map<string, Template>();
const MAX_COMPILED = 32;

function templateError(what: string, e: unknown): Sqlr1Error {
  const msg = e instanceof Error ? e.message : String(e);
  return new Sqlr1Error('ERR_TEMPLATE', `chat template ${what}: ${msg}`, { cause: e });
}

function compile(source: string): Template {
  let t = compiled.get(source);
  if (t) return t;
  try {
    t = new Template(source);
  } catch (e) {
    throw templateError('failed to parse', e);
  }
  if (compiled.size >= MAX_COMPILED) compiled.clear();
  compiled.set(source, t);
  return t;
}

function checkMessages(messages: unknown): asserts messages is ChatMessage[] {
  if (!Array.isArray(messages)) {
    throw new Sqlr1Error('ERR_INVALID_ARG', `renderChat: expected messages to be an array, received ${typeof messages}`);
  }
  messages.forEach((m: unknown, i) => {
    const r = m as Partial<ChatMessage> | null;
    if (r === null || typeof r !== 'object' || typeof r.role !== 'string' || typeof r.content !== 'string') {
      throw new Sqlr1Error(
        'ERR_INVALID_ARG',
        `renderChat: expected messages[${i}] to be { role: string, content: string }, received ${JSON.stringify(m)?.slice(0, 200)}`,
      );
    }
  });
}

/**
 * Renders messages with a Jinja chat template (`null`/`undefined`/'' selects the ChatML fallback).
 * Template syntax errors, runtime errors and `raise_exception(...)` calls throw `ERR_TEMPLATE`.
 */
export function renderChat(
  template: string | null | undefined,
  messages: readonly ChatMessage[],
  options: RenderChatOptions = {},
): string {
  checkMessages(messages);
  const source = template && template.length > 0 ? template : CHATML_TEMPLATE;
  const t = compile(source);
  try {
    return t.render({
      ...options.variables,
      messages: messages.map((m) => ({ ...m })),
      add_generation_prompt: options.addGenerationPrompt ?? true,
      bos_token: options.bosToken ?? '',
      eos_token: options.eosToken ?? '',
    });
  } catch (e) {
    throw templateError('failed to render', e);
  }
}

/** Renders with the tokenizer's own template (or ChatML) and its BOS/EOS texts. */
export function renderChatForTokenizer(
  tokenizer: Tokenizer,
  messages: readonly ChatMessage[],
  options: Omit<RenderChatOptions, 'bosToken' | 'eosToken'> = {},
): string {
  return renderChat(tokenizer.chatTemplate, messages, {
    ...options,
    bosToken: tokenizer.bosId === null ? '' : tokenizer.tokenText(tokenizer.bosId),
    eosToken: tokenizer.eosId === null ? '' : tokenizer.tokenText(tokenizer.eosId),
  });
}
