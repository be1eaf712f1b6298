import { extractIdentifiers, jaccard } from '../sql/identifiers.js';
import type { RewardComponent, RewardContext } from './types.js';

export interface DefaultPresetOptions {
  /** Value when the predicted result equals the gold result. Default 1.0. */
  correct?: number;
  /** Value when the prediction executes but its result differs. Default 0.1. */
  validWrong?: number;
  /** Value when there is no SQL, or it fails: syntax error, unknown table, timeout, rejected. Default -0.5. */
  invalid?: number;
  /** Value when the completion holds a fenced ```sql block (0 otherwise). Default 0.2. */
  format?: number;
  /** Largest partial-match value, reached at identical identifier sets. Default 0.3. */
  partialMatch?: number;
}

// Gold identifier sets repeat across a group's samples and across epochs; parsing them once is enough.
const goldIdentifiers = new Map<string, Set<string>>();
const GOLD_IDENTIFIER_CACHE = 4096;

function identifiersOfGold(sql: string): Set<string> {
  let ids = goldIdentifiers.get(sql);
  if (!ids) {
    ids = extractIdentifiers(sql);
    goldIdentifiers.set(sql, ids);
    if (goldIdentifiers.size > GOLD_IDENTIFIER_CACHE) goldIdentifiers.delete(goldIdentifiers.keys().next().value as string);
  }
  return ids;
}

const executes = (ctx: RewardContext): boolean => ctx.pred !== null && ctx.pred.ok;
const formatted = (ctx: RewardContext): boolean => ctx.extracted.reason === 'fenced_sql';

/**
 * The project's default reward (components `execution`, `format`, `partial_match`):
 * | execution     | +1.0 correct, +0.1 executes but wrong, -0.5 no SQL or fails to execute          |
 * | format        | +0.2 when the answer holds a fenced ```sql block, else 0                        |
 * | partial_match | 0.3 × Jaccard of the table+column identifier sets of predicted and gold SQL,    |
 * |               | only for SQL that executes but is wrong (null otherwise: a correct answer has   |
 * |               | its full reward, and a broken one gets no credit for naming the right columns)  |
 * So correct and formatted = 1.2; valid, wrong, half overlap, formatted = 0.1 + 0.2 + 0.15 = 0.45;
 * invalid and formatted = -0.3. When the gold SQL fails to execute the sample has no reward (total null;
 * `execution` and `partial_match` null, `format` still logged): a broken gold query is never the model's failure.
 */
export function defaultPreset(options: DefaultPresetOptions = {}): RewardComponent[] {
  const { correct = 1.0, validWrong = 0.1, invalid = -0.5, format = 0.2, partialMatch = 0.3 } = options;
  return [
    { name: 'execution', fn: (ctx) => (ctx.correct ? correct : executes(ctx) ? validWrong : invalid) },
    { name: 'format', fn: (ctx) => (formatted(ctx) ? format : 0), needsExecution: false },
    {
      name: 'partial_match',
      fn: (ctx) => {
        if (ctx.correct || !executes(ctx) || ctx.extracted.sql === null) return null;
        return partialMatch * jaccard(extractIdentifiers(ctx.extracted.sql), identifiersOfGold(ctx.goldSql));
      },
    },
  ];
}

export interface SqlR1PresetOptions {
  /** Characters of reasoning that earn the full length bonus. Default 1024. */
  lengthCap?: number;
  /** Length bonus at or past `lengthCap`. Default 0.5. */
  maxLengthBonus?: number;
}

/**
 * The reasoning part of a completion: the text inside <think>...</think> when present, else everything outside
 * the fenced code blocks.
 */
export function reasoningText(completion: string): string {
  const think = /<think>([\s\S]*?)<\/think>/i.exec(completion);
  if (think) return (think[1] ?? '').trim();
  return completion.replace(/(`{3,}|~{3,})[\s\S]*?\1/g, '').trim();
}

/**
 * SQL-R1's progressive reward (arXiv:2504.08600), components `format`, `execution`, `result`, `length`:
 * | format    | +1 when the answer holds a fenced ```sql block, else -1                           |
 * | execution | only when the format passes: +2 when the SQL executes, -2 when it does not        |
 * | result    | only when the SQL executes: +3 when the result is correct, -3 when it is not     |
 * | length    | only on correct answers: maxLengthBonus × min(1, reasoning characters / lengthCap) |
 * The paper rewards longer reasoning on correct answers up to a limit; this implementation measures the
 * reasoning (see {@link reasoningText}) in characters, so it needs no tokenizer. Unformatted answers score -1.
 * When the gold SQL fails to execute the sample has no reward (total null; only `format` is logged).
 */
export function sqlR1Preset(options: SqlR1PresetOptions = {}): RewardComponent[] {
  const { lengthCap = 1024, maxLengthBonus = 0.5 } = options;
  return [
    { name: 'format', fn: (ctx) => (formatted(ctx) ? 1 : -1), needsExecution: false },
    { name: 'execution', fn: (ctx) => (formatted(ctx) ? (executes(ctx) ? 2 : -2) : null) },
    { name: 'result', fn: (ctx) => (formatted(ctx) && executes(ctx) ? (ctx.correct ? 3 : -3) : null) },
    {
      name: 'length',
      fn: (ctx) => (formatted(ctx) && ctx.correct ? maxLengthBonus * Math.min(1, reasoningText(ctx.completion).length / lengthCap) : null),
    },
  ];
}
