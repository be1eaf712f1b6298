import { Sqlr1Error } from '../errors.js';
import { serializeSchema } from './schema.js';

/** One message of a chat prompt, as chat templates consume it. */
export interface PromptMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface PromptInput {
  /** Schema text, e.g. from serializeSchema. */
  schema: string;
  question: string;
}

export interface PromptOptions {
  /** Replaces the default system message (see DEFAULT_SYSTEM_PROMPT). */
  systemPrompt?: string;
}

export const DEFAULT_SYSTEM_PROMPT =
  'You are an expert in SQLite. Given a database schema and a question, write one SQLite query that answers ' +
  'the question. You may reason briefly first; then give the final query in a single ```sql code block.';

/** Chat messages asking for one ```sql block that answers `question` over `schema`. */
export function buildPrompt(input: PromptInput, options: PromptOptions = {}): PromptMessage[] {
  return [
    { role: 'system', content: options.systemPrompt ?? DEFAULT_SYSTEM_PROMPT },
    {
      role: 'user',
      content:
        `Database schema:\n${input.schema.trim()}\n\nQuestion: ${input.question.trim()}\n\n` +
        'Answer with a single SQLite query in one ```sql code block.',
    },
  ];
}

export interface PromptRendererOptions {
  /** Example rows per table in the schema text (serializeSchema's sampleRows). Default 2, as the demo uses. */
  sampleRows?: number;
  /** Replaces the default system message (see DEFAULT_SYSTEM_PROMPT). */
  systemPrompt?: string;
}

/** What PromptRenderer needs of a model: its chat template and tokenizer (a loaded Model has it). */
export interface ChatEncoder {
  encodeChat(messages: PromptMessage[]): number[];
}

/**
 * Renders questions with their database's schema through a model's chat template into prompt token ids. The
 * schema text is serialized once per database (and kept by serializeSchema's cache too); the token ids are
 * cached per (database, question), so a question seen again (every epoch, every eval) costs a lookup.
 */
export class PromptRenderer {
  private readonly schemas = new Map<string, string>();
  private readonly cache = new Map<string, number[]>();
  private readonly sampleRows: number;
  private readonly systemPrompt: string | undefined;
  /** Most cached prompts kept; older entries are dropped first. */
  static readonly MAX_CACHED = 16384;

  constructor(private readonly model: ChatEncoder, options: PromptRendererOptions = {}) {
    this.sampleRows = options.sampleRows ?? 2;
    this.systemPrompt = options.systemPrompt;
    if (!Number.isInteger(this.sampleRows) || this.sampleRows < 0) {
      throw new Sqlr1Error('ERR_INVALID_ARG', `PromptRenderer: sampleRows must be a non-negative integer, received ${String(options.sampleRows)}`);
    }
  }

  /** The chat messages for one question (schema of `dbPath` + question). */
  messages(example: { question: string; dbPath: string }): PromptMessage[] {
    return buildPrompt({ schema: this.schema(example.dbPath), question: example.question }, { systemPrompt: this.systemPrompt });
  }

  /** Prompt token ids for one question, ready for generate(). The returned array must not be modified. */
  tokens(example: { question: string; dbPath: string }): number[] {
    const key = `${example.dbPath}\u0000${example.question}`;
    const hit = this.cache.get(key);
    if (hit) return hit;
    const ids = this.model.encodeChat(this.messages(example));
    this.cache.set(key, ids);
    if (this.cache.size > PromptRenderer.MAX_CACHED) this.cache.delete(this.cache.keys().next().value as string);
    return ids;
  }

  /** The serialized schema of one database, read once. */
  schema(dbPath: string): string {
    let s = this.schemas.get(dbPath);
    if (s === undefined) {
      s = serializeSchema(dbPath, { sampleRows: this.sampleRows });
      this.schemas.set(dbPath, s);
    }
    return s;
  }
}
