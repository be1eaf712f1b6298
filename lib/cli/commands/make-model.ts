import type { Command } from 'commander';
import { makeModel, MODEL_SHAPES, MODEL_TYPES, type ModelShape, type ModelType } from '../../model/index.js';
import { parseChoice, parseIntArg, printJson } from '../util.js';

export function register(program: Command): void {
  program
    .command('make-model')
    .description('write a random-weight GGUF model with a real architecture and the real Qwen2 vocabulary')
    .requiredOption('--out <file>', 'output GGUF path')
    .option('--shape <shape>', `architecture: ${MODEL_SHAPES.join(' | ')}`, parseChoice('--shape', MODEL_SHAPES), 'tiny' as ModelShape)
    .option('--type <type>', `weight type: ${MODEL_TYPES.join(' | ')}`, parseChoice('--type', MODEL_TYPES), 'f32' as ModelType)
    .option('--vocab <file>', 'GGUF to copy the tokenizer from (default: the Qwen2 vocabulary fetched with ggml)')
    .option('--seed <n>', 'weight seed', parseIntArg('--seed'), 42)
    .option('--json', 'machine-readable output')
    .action(async (o: { out: string; shape: ModelShape; type: ModelType; vocab?: string; seed: number; json?: boolean }) => {
      const t0 = performance.now();
      if (!o.json) process.stderr.write(`writing ${o.shape} (${o.type}) to ${o.out} ...\n`);
      const bytes = await makeModel({ shape: o.shape, type: o.type, out: o.out, seed: o.seed, ...(o.vocab ? { vocab: o.vocab } : {}) });
      const seconds = (performance.now() - t0) / 1000;
      if (o.json) printJson({ out: o.out, shape: o.shape, type: o.type, bytes, seconds });
      else process.stdout.write(`wrote ${o.out}: ${(bytes / 2 ** 20).toFixed(1)} MiB in ${seconds.toFixed(1)} s\n`);
    });
}
