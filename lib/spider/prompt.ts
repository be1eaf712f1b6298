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
