/**
 * Evaluating a model on a text-to-SQL set: each question is rendered with its database's schema through the
 * chat template, completions are sampled in large batches (one decode per batch, each prompt's KV shared by its
 * samples), the SQL is extracted and executed in the sandbox while the next batch decodes, and execution
 * accuracy is reported per Spider hardness level, greedy and (with K samples) by majority vote side by side.
 * `sqlr1 eval`, the trainer's periodic evaluation and the demo all measure through this one function.
 */
import { availableParallelism } from 'node:os';
import { Sqlr1Error } from '../errors.js';
import { generate, type Completion } from '../model/generate.js';
import type { LoraAdapter } from '../model/lora.js';
import type { Model } from '../model/model.js';
import { resultsMatch, type ExecMetric, EXEC_METRICS } from '../sql/compare.js';
import { normalizeForExecution } from '../sql/exec-match.js';
import { SqlExecutor, type SqlErrorCode, type SqlResult, type SqlSuccess } from '../sql/executor.js';
import { extractSql } from '../sql/extract.js';
import { classifyHardness, HARDNESS_LEVELS, type Hardness } from '../spider/hardness.js';
import { PromptRenderer } from '../spider/prompt.js';
import { EVAL_LEVELS, type EvalLevel } from './eval-sql.js';

/** One question to evaluate. */
export interface EvalItem {
  question: string;
  /** The SQLite file the question is asked of. */
  dbPath: string;
  goldSql: string;
  /** Shown in reports and written to the gold file (default: the database file's base name). */
  dbId?: string;
  /** 'easy' | 'medium' | 'hard' | 'extra'; default: classified from `goldSql` like Spider's script. */
  hardness?: Hardness | string;
}

/** Anything that turns a question into prompt token ids (a PromptRenderer, or the trainer's own source). */
export interface PromptSource {
  tokens(example: { question: string; dbPath: string }): readonly number[];
}

export interface EvaluateOptions {
  examples: readonly EvalItem[];
  /** Adapter to sample with (default: the base model). */
  lora?: LoraAdapter | null;
  /** K: completions sampled per question for the majority vote. Default 1 (greedy only). */
  samples?: number;
  /** Score the majority vote over the K samples (voteAccuracy). Default: true when samples > 1. */
  vote?: boolean;
  /**
   * With samples = 1: the temperature of the one completion per question (default 0, greedy). With samples > 1:
   * the temperature of the K voting samples (default 0.7, the seed config's sampling temperature); `accuracy`
   * then still comes from a separate greedy pass, so greedy and vote@K sit side by side.
   */
  temperature?: number;
  /** Most new tokens per completion. Default 256. */
  maxNewTokens?: number;
  /** Generation stops after any of these strings (the closing fence of the answer). Default ['```\n']. */
  stop?: readonly string[];
  /** Comparison semantics: 'spider' (default) or 'bird'. */
  metric?: ExecMetric;
  /** Executor for the SQL; default: one made for this call (min(8, CPUs) workers, 5 s per query) and closed after. */
  executor?: SqlExecutor;
  /**
   * Most sequences (questions x completions) decoded together. Default: 1024 on CUDA, 64 on the CPU; a batch is
   * also kept under about 40 GiB (CUDA) or 2 GiB (CPU) of KV cache. Questions are batched by prompt length, so
   * a batch's KV rows are of similar size.
   */
  batchSize?: number;
  /** Base sampling seed (each batch and sequence derives its own stream). Default 0. */
  seed?: number;
  /**
   * Progress: called as questions are done. `total` is the number of questions times the passes (2 with
   * samples > 1: the greedy pass counts each question once as its batch is decoded, the voting pass once more as
   * it is scored), so `done / total` is the fraction of the work.
   */
  onProgress?: (done: number, total: number) => void;
  /** Renders the prompts; default: a PromptRenderer over the model's chat template (2 sample rows per table). */
  renderer?: PromptSource;
  /** Same as `renderer` (the trainer's name for it). */
  prompts?: PromptSource;
  signal?: AbortSignal;
}

export type Verdict = 'correct' | 'wrong' | 'gold_error';

export interface EvalCandidate {
  /** The completion as generated. */
  completion: string;
  /** The SQL found in it ('' when none). */
  sql: string;
  verdict: Verdict;
  /** Why the SQL failed to execute (no SQL found: ERR_SQL_REJECTED). */
  error?: { code: SqlErrorCode; message: string };
  finishReason: Completion['finishReason'];
  tokens: number;
  execMs: number;
}

export interface EvalEntry {
  index: number;
  question: string;
  db: string;
  dbPath: string;
  gold: string;
  /** null when the gold SQL could not be parsed for hardness (then it counts in 'all' only). */
  hardness: Hardness | null;
  /** The greedy (or only) completion's SQL ('' when none), as written to the predictions file. */
  prediction: string;
  verdict: Verdict;
  /** The greedy (or only) completion in full. */
  primary: EvalCandidate;
  /** The K voting samples (samples > 1). */
  candidates?: EvalCandidate[];
  /** The majority vote's choice (vote): its SQL, how many candidates agreed, and its verdict. */
  vote?: { sql: string; votes: number; verdict: Verdict };
  /** Why the gold query failed (verdict gold_error). */
  goldError?: { code: SqlErrorCode; message: string };
  timing: {
    /** This question's share of its batch's prompt processing and decoding, in milliseconds. */
    generateMs: number;
    /** Time spent executing its gold and predicted queries in the workers, in milliseconds. */
    execMs: number;
  };
}

export interface LevelScore {
  count: number;
  correct: number;
  /** correct / count; 0 for an empty level. */
  accuracy: number;
}

export interface EvaluationReport {
  metric: ExecMetric;
  /** Questions evaluated (gold errors included). */
  n: number;
  samples: number;
  temperature: number;
  maxNewTokens: number;
  /** Greedy (or single-sample) execution accuracy per level; gold errors count nowhere. */
  accuracy: Record<EvalLevel, LevelScore>;
  /** Majority vote over the K samples, per level (when vote). */
  voteAccuracy?: Record<EvalLevel, LevelScore>;
  /** Questions whose gold query failed to execute. */
  goldErrors: number;
  entries: EvalEntry[];
  /** Wall time of the whole evaluation, in seconds. */
  seconds: number;
  questionsPerSecond: number;
  /** Generated tokens over all completions, and their rate over the wall time. */
  tokens: number;
  tokensPerSecond: number;
}

const DEFAULT_MAX_SEQS = { cuda: 1024, cpu: 64 } as const;
const KV_BUDGET_BYTES = { cuda: 40 * 2 ** 30, cpu: 2 * 2 ** 30 } as const;

const invalid = (msg: string): Sqlr1Error => new Sqlr1Error('ERR_INVALID_ARG', `evaluateModel: ${msg}`);

function checkOptions(o: EvaluateOptions): void {
  if (!Array.isArray(o.examples)) throw invalid(`expected examples to be an array, received ${typeof o.examples}`);
  o.examples.forEach((ex, i) => {
    for (const k of ['question', 'dbPath', 'goldSql'] as const) {
      if (typeof ex?.[k] !== 'string' || ex[k] === '') throw invalid(`examples[${i}].${k} must be a non-empty string, received ${JSON.stringify(ex?.[k])}`);
    }
    if (ex.hardness !== undefined && !(HARDNESS_LEVELS as readonly string[]).includes(ex.hardness)) {
      throw invalid(`examples[${i}].hardness must be one of ${HARDNESS_LEVELS.join(', ')}, received ${JSON.stringify(ex.hardness)}`);
    }
  });
  const posInt = (name: string, v: number | undefined): void => {
    if (v !== undefined && !(Number.isInteger(v) && v >= 1)) throw invalid(`${name} must be a positive integer, received ${String(v)}`);
  };
  posInt('samples', o.samples);
  posInt('maxNewTokens', o.maxNewTokens);
  posInt('batchSize', o.batchSize);
  if (o.seed !== undefined && !(Number.isInteger(o.seed) && o.seed >= 0)) throw invalid(`seed must be a non-negative integer, received ${String(o.seed)}`);
  if (o.temperature !== undefined && !(Number.isFinite(o.temperature) && o.temperature >= 0)) {
    throw invalid(`temperature must be a finite number >= 0, received ${String(o.temperature)}`);
  }
  if (o.metric !== undefined && !EXEC_METRICS.includes(o.metric)) throw invalid(`metric must be one of ${EXEC_METRICS.join(', ')}, received ${String(o.metric)}`);
  if (o.vote && (o.samples ?? 1) < 2) throw invalid(`vote needs samples >= 2, received samples = ${String(o.samples ?? 1)}`);
}

/** Empty per-level scores. */
function emptyScores(): Record<EvalLevel, LevelScore> {
  return Object.fromEntries(EVAL_LEVELS.map((l) => [l, { count: 0, correct: 0, accuracy: 0 }])) as Record<EvalLevel, LevelScore>;
}

/** Per-level accuracy of verdicts (gold errors count nowhere; unclassified questions count in 'all' only). */
export function scoreLevels(items: readonly { hardness: Hardness | null; verdict: Verdict }[]): Record<EvalLevel, LevelScore> {
  const s = emptyScores();
  for (const it of items) {
    if (it.verdict === 'gold_error') continue;
    for (const l of it.hardness ? [it.hardness, 'all' as const] : ['all' as const]) {
      s[l].count++;
      if (it.verdict === 'correct') s[l].correct++;
    }
  }
  for (const l of EVAL_LEVELS) s[l].accuracy = s[l].count > 0 ? s[l].correct / s[l].count : 0;
  return s;
}

/**
 * The trainer's eval metrics from a report: `eval/execution_accuracy` (all) and
 * `eval/execution_accuracy/<easy|medium|hard|extra>` for each level that has questions (an empty level is left
 * out rather than logged as 0).
 */
export function evalMetrics(report: Pick<EvaluationReport, 'accuracy'>): Record<string, number> {
  const out: Record<string, number> = { 'eval/execution_accuracy': report.accuracy.all.accuracy };
  for (const l of HARDNESS_LEVELS) if (report.accuracy[l].count > 0) out[`eval/execution_accuracy/${l}`] = report.accuracy[l].accuracy;
  return out;
}

/** Splits question indices (sorted by prompt length) into batches under the sequence and KV-memory limits. */
export function planBatches(lengths: readonly number[], opts: { seqsPerQuestion: number; maxSeqs: number; maxNewTokens: number; kvBytesPerToken: number; kvBudget: number }): number[][] {
  const order = lengths.map((_, i) => i).sort((a, b) => lengths[a]! - lengths[b]! || a - b);
  const batches: number[][] = [];
  let cur: number[] = [];
  for (const i of order) {
    const n = cur.length + 1;
    // Sorted ascending, so this question's prompt is the batch's longest: every sequence gets its length.
    const kv = n * opts.seqsPerQuestion * (lengths[i]! + opts.maxNewTokens) * opts.kvBytesPerToken;
    if (cur.length > 0 && (n * opts.seqsPerQuestion > opts.maxSeqs || kv > opts.kvBudget)) {
      batches.push(cur);
      cur = [];
    }
    cur.push(i);
  }
  if (cur.length > 0) batches.push(cur);
  return batches;
}

interface Prepared {
  item: EvalItem;
  hardness: Hardness | null;
  db: string;
  /** The gold SQL as executed (normalized for the spider metric). */
  gold: string;
}

function prepareItem(item: EvalItem, metric: ExecMetric): Prepared {
  return {
    item,
    hardness: (item.hardness as Hardness | undefined) ?? classifyHardness(item.goldSql),
    db: item.dbId ?? item.dbPath.replace(/^.*[\\/]/, '').replace(/\.(sqlite|db)$/i, ''),
    gold: metric === 'bird' ? item.goldSql : normalizeForExecution(item.goldSql),
  };
}

/** Runs `model` over `options.examples` and scores the answers by execution (see the file header). */
export async function evaluateModel(model: Model, options: EvaluateOptions): Promise<EvaluationReport> {
  checkOptions(options);
  const t0 = performance.now();
  const K = options.samples ?? 1;
  const vote = options.vote ?? K > 1;
  const temperature = options.temperature ?? (K > 1 ? 0.7 : 0);
  const maxNewTokens = options.maxNewTokens ?? 256;
  const metric = options.metric ?? 'spider';
  const stop = options.stop ?? ['```\n'];
  const seed = options.seed ?? 0;
  const renderer = options.renderer ?? options.prompts ?? new PromptRenderer(model);
  const device = model.device === 'cuda' ? 'cuda' : 'cpu';
  const maxSeqs = Math.min(options.batchSize ?? DEFAULT_MAX_SEQS[device], 4096);
  if (maxSeqs < K) throw invalid(`batchSize (${maxSeqs}) must hold at least the ${K} samples of one question`);
  const ownExecutor = options.executor === undefined;
  const executor = options.executor ?? new SqlExecutor({ workers: Math.max(1, Math.min(8, availableParallelism())) });

  const items = options.examples.map((item) => prepareItem(item, metric));
  const prompts = items.map((p) => renderer.tokens(p.item));
  const { info } = model;
  // F16 K and V rows per layer (the native cache's layout).
  const kvBytesPerToken = 2 * 2 * info.nLayer * info.nHeadKv * info.headDim;
  const lengths = prompts.map((p) => p.length);
  const plan = (seqsPerQuestion: number): number[][] =>
    planBatches(lengths, { seqsPerQuestion, maxSeqs, maxNewTokens, kvBytesPerToken, kvBudget: KV_BUDGET_BYTES[device] });
  // K = 1: one pass at `temperature`. K > 1: a greedy pass for `accuracy`, then the K samples for the vote, each
  // pass batched for its own sequences per question.
  const passes = K > 1
    ? [{ samples: 1, temperature: 0, seed }, { samples: K, temperature, seed: seed + 1_000_003 }]
    : [{ samples: 1, temperature, seed }];

  const total = items.length * passes.length;
  const entries = new Array<EvalEntry>(items.length);
  const primary = new Array<Completion>(items.length);
  const generateMs = new Array<number>(items.length).fill(0);
  let done = 0;
  let tokens = 0;
  const scoring: Promise<void>[] = [];
  try {
    for (const [passIndex, pass] of passes.entries()) {
      const last = passIndex === passes.length - 1;
      for (const [b, batch] of plan(pass.samples).entries()) {
        if (options.signal?.aborted) throw new Sqlr1Error('ERR_ABORTED', 'evaluation was aborted');
        const tb = performance.now();
        const out = await generate(model, {
          prompts: batch.map((i) => prompts[i]!), samplesPerPrompt: pass.samples, temperature: pass.temperature, seed: pass.seed + b,
          maxNewTokens, stop, ...(options.lora !== undefined ? { lora: options.lora } : {}), ...(options.signal ? { signal: options.signal } : {}),
        });
        const share = (performance.now() - tb) / batch.length;
        for (const c of out.completions) tokens += c.tokens.length;
        batch.forEach((qi, j) => {
          generateMs[qi]! += share;
          if (passIndex === 0) primary[qi] = out.completions[j]!;
        });
        if (!last) {
          done += batch.length;
          options.onProgress?.(done, total);
          continue;
        }
        // Scoring runs in the SQL workers while the next batch decodes.
        scoring.push(...batch.map(async (qi, j) => {
          const cands = K > 1 ? out.completions.slice(j * K, (j + 1) * K) : null;
          entries[qi] = await scoreItem(executor, qi, items[qi]!, metric, primary[qi]!, cands, vote, generateMs[qi]!);
          options.onProgress?.(++done, total);
        }));
      }
    }
    await Promise.all(scoring);
  } finally {
    // A failure mid-way must not leave scoring promises rejecting unobserved or workers running.
    await Promise.allSettled(scoring);
    if (ownExecutor) await executor.close();
  }

  const seconds = (performance.now() - t0) / 1000;
  const report: EvaluationReport = {
    metric, n: items.length, samples: K, temperature, maxNewTokens,
    accuracy: scoreLevels(entries),
    goldErrors: entries.filter((e) => e.verdict === 'gold_error').length,
    entries, seconds, questionsPerSecond: items.length / seconds, tokens, tokensPerSecond: tokens / seconds,
  };
  if (vote) report.voteAccuracy = scoreLevels(entries.map((e) => ({ hardness: e.hardness, verdict: e.vote!.verdict })));
  return report;
}

type Generated = Pick<Completion, 'text' | 'tokens' | 'finishReason'>;

/**
 * Scores one question's completions: the primary (greedy) one and, when given, the K voting samples. This is
 * evaluateModel's scoring half, usable on completions from elsewhere.
 */
export async function scoreQuestion(
  executor: SqlExecutor, item: EvalItem, completions: { primary: Generated; candidates?: readonly Generated[] },
  options: { metric?: ExecMetric; vote?: boolean; index?: number } = {},
): Promise<EvalEntry> {
  const metric = options.metric ?? 'spider';
  const cands = completions.candidates ?? null;
  return scoreItem(executor, options.index ?? 0, prepareItem(item, metric), metric, completions.primary, cands, options.vote ?? (cands !== null && cands.length > 1), 0);
}

async function scoreItem(
  executor: SqlExecutor, index: number, p: Prepared, metric: ExecMetric, primary: Generated, cands: readonly Generated[] | null,
  vote: boolean, generateMs: number,
): Promise<EvalEntry> {
  const { item } = p;
  const prepare = (sql: string): string => (metric === 'bird' ? sql : normalizeForExecution(sql));
  const goldRes = await executor.run(item.dbPath, p.gold, { cache: true });
  let execMs = goldRes.ms;
  const judge = async (c: Generated): Promise<{ cand: EvalCandidate; result: SqlResult }> => {
    const sql = extractSql(c.text).sql ?? '';
    const result = await executor.run(item.dbPath, prepare(sql));
    execMs += result.ms;
    const verdict: Verdict = !goldRes.ok ? 'gold_error'
      : result.ok && resultsMatch(metric, goldRes.rows, result.rows, p.gold) ? 'correct' : 'wrong';
    const cand: EvalCandidate = { completion: c.text, sql, verdict, finishReason: c.finishReason, tokens: c.tokens.length, execMs: result.ms };
    if (!result.ok) cand.error = result.error;
    return { cand, result };
  };
  const [first, ...rest] = await Promise.all([primary, ...(cands ?? [])].map(judge));
  const entry: EvalEntry = {
    index, question: item.question, db: p.db, dbPath: item.dbPath, gold: item.goldSql, hardness: p.hardness,
    prediction: first!.cand.sql, verdict: first!.cand.verdict, primary: first!.cand,
    timing: { generateMs, execMs },
  };
  if (cands) entry.candidates = rest.map((r) => r.cand);
  if (!goldRes.ok) entry.goldError = goldRes.error;
  if (vote) {
    const choice = majorityOf(rest, metric);
    const verdict: Verdict = !goldRes.ok ? 'gold_error' : choice && resultsMatch(metric, goldRes.rows, choice.result.rows, p.gold) ? 'correct' : 'wrong';
    entry.vote = { sql: choice?.sql ?? rest[0]?.cand.sql ?? '', votes: choice?.votes ?? 0, verdict };
  }
  return entry;
}

/**
 * Self-consistency over executed candidates, with majorityVote's rules: results are grouped by execution match
 * against each group's first member (spider: row order matters when that member has ORDER BY; bird: sets),
 * failed executions do not vote, ties go to the group whose first member came earliest; null when all failed.
 */
export function majorityOf(
  cands: readonly { cand: { sql: string }; result: SqlResult }[], metric: ExecMetric,
): { sql: string; votes: number; result: SqlSuccess } | null {
  const groups: { sql: string; votes: number; result: SqlSuccess }[] = [];
  for (const { cand, result } of cands) {
    if (!result.ok) continue;
    const g = groups.find((x) => resultsMatch(metric, x.result.rows, result.rows, x.sql));
    if (g) g.votes++;
    else groups.push({ sql: cand.sql, votes: 1, result });
  }
  let best: (typeof groups)[number] | null = null;
  for (const g of groups) if (!best || g.votes > best.votes) best = g;
  return best;
}

/**
 * What the predictions file holds for an answer without SQL: a statement that fails to execute (scored wrong).
 * Not a blank line: Spider's evaluation script drops blank lines, which would shift every later prediction.
 */
export const NO_SQL_PLACEHOLDER = 'SELECT';

/** The prediction file's line for one SQL: newlines and tabs become spaces (one query per line). */
export function predictionLine(sql: string): string {
  const line = sql.replace(/\s+/g, ' ').trim();
  return line === '' ? NO_SQL_PLACEHOLDER : line;
}

/** The predictions file (one SQL per line, in question order) that `sqlr1 eval-sql` and Spider's script read. */
export function formatPredictions(report: EvaluationReport, which: 'primary' | 'vote' = 'primary'): string {
  return `${report.entries.map((e) => predictionLine(which === 'vote' ? (e.vote?.sql ?? '') : e.prediction)).join('\n')}\n`;
}

/** The matching gold file: `SQL<TAB>db_id` per line. */
export function formatGold(report: EvaluationReport): string {
  return `${report.entries.map((e) => `${predictionLine(e.gold)}\t${e.db}`).join('\n')}\n`;
}

/** A score table in the layout of Spider's evaluation.py: greedy, and the vote's row when there is one. */
export function formatEvaluation(report: EvaluationReport): string {
  const cell = (s: string | number): string => String(s).padEnd(20);
  const row = (label: string, s: Record<EvalLevel, LevelScore>): string =>
    [cell(label), ...EVAL_LEVELS.map((l) => cell(s[l].accuracy.toFixed(3)))].join(' ').trimEnd();
  const lines = [
    [cell(''), ...EVAL_LEVELS.map(cell)].join(' ').trimEnd(),
    [cell('count'), ...EVAL_LEVELS.map((l) => cell(report.accuracy[l].count))].join(' ').trimEnd(),
    `=====================   EXECUTION ACCURACY (${report.metric})   =====================`,
    row(report.samples > 1 ? 'greedy' : report.temperature > 0 ? `T=${report.temperature}` : 'greedy', report.accuracy),
  ];
  if (report.voteAccuracy) lines.push(row(`vote@${report.samples}`, report.voteAccuracy));
  if (report.goldErrors > 0) lines.push('', `${report.goldErrors} gold queries failed to execute; they count nowhere`);
  lines.push('', `${report.n} questions in ${report.seconds.toFixed(1)} s: ${report.questionsPerSecond.toFixed(2)} questions/s, ` +
    `${report.tokens} tokens generated (${report.tokensPerSecond.toFixed(0)} tokens/s)`);
  return `${lines.join('\n')}\n`;
}
