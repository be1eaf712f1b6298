import type { Command } from 'commander';
import { writeReport } from '../../report/index.js';
import { parseFloatArg, parseIntArg, printJson } from '../util.js';

/** Adds `sqlr1 report RUN_DIR`: a self-contained HTML page of a run's curves, completions and config. */
export function register(program: Command): void {
  program
    .command('report')
    .description("write a run's report: one self-contained HTML page (SVG curves, sampled completions, config); no network, no scripts")
    .argument('<run-dir>', 'the run directory (config.yaml, metrics.jsonl, completions.jsonl)')
    .option('--out <file>', 'where to write the page (default: RUN_DIR/report.html)')
    .option('--smoothing <w>', 'EMA weight for noisy curves, 0 = off', parseFloatArg('--smoothing', 0, 0.99), 0.6)
    .option('--max-completions <n>', 'most completions listed, latest steps first', parseIntArg('--max-completions', 0), 60)
    .option('--json', 'print { path } instead of the path')
    .action(async (runDir: string, o: { out?: string; smoothing: number; maxCompletions: number; json?: boolean }) => {
      const path = await writeReport(runDir, { smoothing: o.smoothing, maxCompletions: o.maxCompletions, ...(o.out ? { out: o.out } : {}) });
      if (o.json) printJson({ path });
      else process.stdout.write(`${path}\n`);
    });
}
