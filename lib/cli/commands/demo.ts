import type { Command } from 'commander';
import { runDemo } from '../../demo/demo.js';
import { parseChoice, parseIntArg, printJson } from '../util.js';

export function register(program: Command): void {
  program
    .command('demo')
    .description('the embedded default: a toy database and a small synthesized model; accuracy before training, after a supervised warm-up, after GRPO')
    .option('--device <device>', 'auto | cpu | cuda', parseChoice('--device', ['auto', 'cpu', 'cuda'] as const), 'auto')
    .option('--dir <dir>', 'working folder for the model, database and run directory (default: a folder under the OS temp dir)')
    .option('--seed <n>', 'seed of the adapter, data order and sampling', parseIntArg('--seed'))
    .option('--json', 'machine-readable output')
    .action(async (o: { device: 'auto' | 'cpu' | 'cuda'; dir?: string; seed?: number; json?: boolean }) => {
      const report = await runDemo({
        device: o.device, ...(o.dir ? { dir: o.dir } : {}), ...(o.seed !== undefined ? { config: { seed: o.seed } } : {}),
        progress: !o.json, log: o.json ? () => undefined : (m) => process.stderr.write(m + '\n'),
      });
      if (o.json) printJson(report);
      // The demo's promise: GRPO raises accuracy over the warm-up alone. Its own exit status (3), apart from errors
      // (1), so that a caller can tell "ran, but did not learn" from "failed to run".
      if (!report.improved) process.exitCode = DEMO_NOT_IMPROVED_EXIT;
    });
}

/** The demo's exit status when it ran to the end but GRPO did not raise accuracy over the warm-up. */
export const DEMO_NOT_IMPROVED_EXIT = 3;
