/**
 * The `sqlr1` command line. Each command lives in commands/<name>.ts and registers itself on the program.
 */
import { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isSqlr1Error } from '../errors.js';
import { packageRoot } from '../native/binding.js';
import { register as registerMakeModel } from './commands/make-model.js';
import { register as registerTokenize } from './commands/tokenize.js';
import { register as registerGenerate } from './commands/generate.js';
import { register as registerBench } from './commands/bench.js';
import { register as registerDemo } from './commands/demo.js';
import { register as registerEvalSql } from './commands/eval-sql.js';
import { register as registerEval } from './commands/eval.js';
import { register as registerReport } from './commands/report.js';
import { register as registerTrain } from './commands/train.js';

export function buildProgram(): Command {
  const pkg = JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string };
  const program = new Command('sqlr1')
    .description('GRPO reinforcement learning for text-to-SQL on ggml (CPU and CUDA)')
    .version(pkg.version)
    .showHelpAfterError();
  for (const register of [registerDemo, registerTrain, registerMakeModel, registerTokenize, registerGenerate, registerBench, registerEvalSql, registerEval, registerReport]) {
    register(program);
  }
  return program;
}

export async function main(argv: string[] = process.argv): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (e) {
    if (isSqlr1Error(e)) {
      process.stderr.write(`sqlr1: error [${e.code}]: ${e.message}\n`);
      process.exitCode = 1;
      return;
    }
    throw e;
  }
}
