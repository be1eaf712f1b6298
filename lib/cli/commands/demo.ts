import type { Command } from 'commander';
import { runDemo } from '../../demo/demo.js';
import { parseChoice, parseIntArg, printJson } from '../util.js';

export function register(program: Command): void {
  program
    .command('demo')
    .description('the embedded default: a toy database and a tiny synthesized model, sampled, executed and scored')
    .option('--device <device>', 'auto | cpu | cuda', parseChoice('--device', ['auto', 'cpu', 'cuda'] as const), 'auto')
    .option('--dir <dir>', 'working folder for the model and database (default: a folder under the OS temp dir)')
    .option('--samples <k>', 'completions per question', parseIntArg('--samples', 1), 4)
    .option('--seed <n>', 'seed', parseIntArg('--seed'), 0)
    .option('--json', 'machine-readable output')
    .action(async (o: { device: 'auto' | 'cpu' | 'cuda'; dir?: string; samples: number; seed: number; json?: boolean }) => {
      const report = await runDemo({ device: o.device, samples: o.samples, seed: o.seed, ...(o.dir ? { dir: o.dir } : {}),
        log: o.json ? () => undefined : (m) => process.stderr.write(m + '\n') });
      if (o.json) printJson(report);
    });
}
