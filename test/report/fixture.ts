/**
 * A fixture run directory as the trainer writes it: config.yaml, metrics.jsonl with the contract's metric names
 * (eval lines of their own every few steps), completions.jsonl with hostile model output, and optionally a
 * last line cut in half (a run killed mid-write).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Model output that must come out as text, never as markup. */
export const HOSTILE = [
  '<script>document.title="pwned"</script>',
  '</pre></td></tr></table><img src=x onerror="alert(1)">',
  "```sql\nSELECT name FROM t WHERE a < 3 AND b > 'x' -- & \"q\"\n```",
];

export interface FixtureRun {
  dir: string;
  steps: number;
  evalSteps: number[];
  /** How many metric lines hold each key (what each chart's series must show). */
  counts: Record<string, number>;
  completions: number;
}

/** Seeded uniform noise in [0, 1) (mulberry32). */
function rand(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function writeFixtureRun(dir: string, options: { steps?: number; evalEvery?: number; truncated?: boolean; seed?: number } = {}): FixtureRun {
  const steps = options.steps ?? 40;
  const evalEvery = options.evalEvery ?? 10;
  const r = rand(options.seed ?? 11);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.yaml'), '# resolved config\nlearning_rate: 5.0e-6  # seed value\nnum_generations: 4\nbeta: 0.05\nmodel: "<b>not bold</b>"\n');
  const lines: string[] = [];
  const counts: Record<string, number> = {};
  const add = (row: Record<string, number>): void => {
    lines.push(JSON.stringify(row));
    for (const k of Object.keys(row)) counts[k] = (counts[k] ?? 0) + 1;
  };
  const evalSteps: number[] = [];
  for (let step = 1; step <= steps; step++) {
    const progress = step / steps;
    const row: Record<string, number> = {
      step, epoch: progress,
      reward: -0.3 + 1.2 * progress + 0.3 * (r() - 0.5), reward_std: 0.4 * r(),
      'rewards/execution/mean': progress + 0.2 * (r() - 0.5), 'rewards/execution/std': 0.3,
      'rewards/format/mean': Math.min(0.2, 0.05 + 0.2 * progress), 'rewards/format/std': 0.05,
      'rewards/partial/mean': 0.1 + 0.1 * r(), 'rewards/partial/std': 0.02,
      frac_correct: Math.min(1, progress * 0.8 + 0.1 * r()), kl: 0.002 * step * (0.8 + 0.4 * r()), loss: 0.05 * (r() - 0.5),
      grad_norm: 0.5 + r(), 'clip_ratio/low_mean': 0.01 * r(), 'clip_ratio/high_mean': 0.02 * r(), 'clip_ratio/region_mean': 0.03 * r(),
      'completions/mean_length': 60 + 20 * r(), 'completions/min_length': 20 + 5 * r(), 'completions/max_length': 120 + 40 * r(),
      learning_rate: 5e-6 * (1 - progress), step_time: 0.4 + 0.1 * r(), tokens_per_second: 9000 + 1000 * r(),
    };
    // The first step has no KL yet (the policy equals the reference): the series starts at step 2.
    if (step === 1) delete row['kl'];
    add(row);
    if (step % evalEvery === 0) {
      evalSteps.push(step);
      add({
        step, 'eval/execution_accuracy': 0.2 + 0.5 * progress,
        'eval/execution_accuracy/easy': 0.4 + 0.5 * progress, 'eval/execution_accuracy/medium': 0.2 + 0.4 * progress,
        'eval/execution_accuracy/hard': 0.1 + 0.3 * progress, 'eval/execution_accuracy/extra': 0.05 * progress,
      });
    }
  }
  let metricsText = lines.map((l) => `${l}\n`).join('');
  if (options.truncated) metricsText += '{"step": 41, "reward": 0.9, "kl"'; // cut mid-write
  writeFileSync(join(dir, 'metrics.jsonl'), metricsText);
  const completions: string[] = [];
  for (let step = 1; step <= steps; step += 5) {
    for (let k = 0; k < 4; k++) {
      const correct = r() < step / steps;
      completions.push(JSON.stringify({
        step, prompt: `Question ${step}.${k}: how many rows in t? ${HOSTILE[k % HOSTILE.length]}`,
        completion: HOSTILE[(k + 1) % HOSTILE.length], sql: 'SELECT count(*) FROM t WHERE x < 1',
        reward: correct ? 1.2 : -0.3, components: { execution: correct ? 1 : -0.5, format: 0.2, partial: k === 3 ? null : 0.1 * k }, correct,
      }));
    }
  }
  writeFileSync(join(dir, 'completions.jsonl'), completions.map((l) => `${l}\n`).join(''));
  return { dir, steps, evalSteps, counts, completions: completions.length };
}
