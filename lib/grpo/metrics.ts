/**
 * The run directory's logs and the progress display: metrics.jsonl (one object per logged step, TRL's metric
 * names), completions.jsonl (sampled completions with their reward components), and a progress bar on a
 * terminal (cli-progress) or plain lines otherwise.
 */
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import cliProgress from 'cli-progress';

export type Metrics = Record<string, number>;

/** One sampled completion as completions.jsonl stores it. */
export interface CompletionRecord {
  step: number;
  /** The question text. */
  prompt: string;
  completion: string;
  /** The SQL extracted from the completion ('' when none). */
  sql: string;
  /** The total reward; null when the gold SQL failed (no reward, no gradient). */
  reward: number | null;
  components: Record<string, number | null>;
  correct: boolean;
}

export const METRICS_FILE = 'metrics.jsonl';
export const COMPLETIONS_FILE = 'completions.jsonl';

export function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
}

/** Population standard deviation (as the rewards' metrics). */
export function std(xs: readonly number[]): number {
  if (xs.length === 0) return 0;
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, b) => a + (b - m) * (b - m), 0) / xs.length);
}

function lineCount(path: string): number {
  if (!existsSync(path)) return 0;
  const text = readFileSync(path, 'utf8');
  return text.length === 0 ? 0 : text.split('\n').filter((l) => l.length > 0).length;
}

/** Keeps the first `n` lines of a JSONL file (resuming drops what was logged after the checkpoint). */
function truncateLines(path: string, n: number): void {
  if (!existsSync(path)) return;
  const lines = readFileSync(path, 'utf8').split('\n').filter((l) => l.length > 0).slice(0, n);
  writeFileSync(path, lines.map((l) => l + '\n').join(''));
}

/** Appends to metrics.jsonl and completions.jsonl in a run directory. */
export class RunLog {
  readonly metricsPath: string;
  readonly completionsPath: string;
  /** Lines written to metrics.jsonl so far (saved in checkpoints as the metric history length). */
  metricLines: number;
  completionLines: number;

  constructor(readonly dir: string, resume?: { metricLines: number; completionLines: number }) {
    this.metricsPath = join(dir, METRICS_FILE);
    this.completionsPath = join(dir, COMPLETIONS_FILE);
    if (resume) {
      truncateLines(this.metricsPath, resume.metricLines);
      truncateLines(this.completionsPath, resume.completionLines);
    } else {
      writeFileSync(this.metricsPath, '');
      writeFileSync(this.completionsPath, '');
    }
    this.metricLines = lineCount(this.metricsPath);
    this.completionLines = lineCount(this.completionsPath);
  }

  metrics(step: number, epoch: number, metrics: Metrics): void {
    appendFileSync(this.metricsPath, JSON.stringify({ step, epoch, ...metrics }) + '\n');
    this.metricLines++;
  }

  completions(records: readonly CompletionRecord[]): void {
    if (records.length === 0) return;
    appendFileSync(this.completionsPath, records.map((r) => JSON.stringify(r) + '\n').join(''));
    this.completionLines += records.length;
  }
}

/** What the progress display shows after each step. */
export interface ProgressUpdate {
  step: number;
  reward: number;
  accuracy: number;
  stepTime: number;
  /** The latest eval execution accuracy, when there is one. */
  evalAccuracy?: number;
}

/**
 * Progress on stderr: a cli-progress bar (step, reward, accuracy, step time, ETA) on a terminal; one plain line
 * per logged step otherwise (logs, CI). `SQLR1_PROGRESS=0` silences both.
 */
export class Progress {
  private bar: cliProgress.SingleBar | undefined;
  private readonly plain: boolean;
  private readonly off: boolean;

  constructor(private readonly total: number, start: number, private readonly stream: NodeJS.WriteStream = process.stderr, private readonly label = 'grpo') {
    this.off = process.env.SQLR1_PROGRESS === '0';
    this.plain = !this.off && !stream.isTTY;
    if (!this.off && !this.plain) {
      this.bar = new cliProgress.SingleBar({
        stream,
        format: `${label} [{bar}] {value}/{total} | reward {reward} | acc {acc} | {stepTime}s/step | eval {evalAcc} | ETA {eta_formatted}`,
        hideCursor: true,
        etaBuffer: 10,
      }, cliProgress.Presets.shades_classic);
      this.bar.start(total, start, { reward: '-', acc: '-', stepTime: '-', evalAcc: '-' });
    }
  }

  update(u: ProgressUpdate, logged: boolean): void {
    if (this.off) return;
    const payload = {
      reward: u.reward.toFixed(3), acc: u.accuracy.toFixed(3), stepTime: u.stepTime.toFixed(2),
      evalAcc: u.evalAccuracy === undefined ? '-' : u.evalAccuracy.toFixed(3),
    };
    if (this.bar) this.bar.update(u.step, payload);
    else if (logged) {
      const eta = u.stepTime * (this.total - u.step);
      this.stream.write(`${this.label} step ${u.step}/${this.total} reward ${payload.reward} acc ${payload.acc} ` +
        `${payload.stepTime} s/step eval ${payload.evalAcc} ETA ${eta.toFixed(0)} s\n`);
    }
  }

  /** A message above the bar (or a plain line). */
  log(msg: string): void {
    if (this.off) return;
    if (this.bar) {
      this.stream.write('\r\x1b[K' + msg + '\n');
      this.bar.render();
    } else this.stream.write(msg + '\n');
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}
