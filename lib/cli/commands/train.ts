/**
 * `sqlr1 train --config configs/grpo_config.yaml [--model F.gguf] [--spider DIR] [--max-samples N] [--resume DIR]
 * [--set key=value ...] [--nproc-per-node N]`: GRPO on Spider's training split, evaluated on dev. The config is
 * validated before the model loads; Ctrl-C finishes the step in progress, saves a checkpoint and exits 0 (a second
 * Ctrl-C exits at once). With WORLD_SIZE > 1 (torchrun's variables) the process is one rank of a data-parallel
 * run; `--nproc-per-node N` starts N such ranks on this machine.
 */
import type { Command } from 'commander';
import { dirname, resolve } from 'node:path';
import { Sqlr1Error } from '../../errors.js';
import { loadConfig, parseOverride } from '../../grpo/config.js';
import { GrpoTrainer } from '../../grpo/trainer.js';
import { SpiderDataset } from '../../spider/dataset.js';
import { distEnvFrom, pinLocalDevice } from '../../distributed/env.js';
import { ProcessGroup } from '../../distributed/group.js';
import { launchLocal } from '../../distributed/launch.js';
import { parseIntArg, printJson } from '../util.js';

interface TrainCliOptions {
  config: string;
  model?: string;
  spider?: string;
  maxSamples?: number;
  resume?: string;
  set: string[];
  json?: boolean;
  nprocPerNode?: number;
}

export function register(program: Command): void {
  program
    .command('train')
    .description('GRPO training of a LoRA adapter on Spider (config keys: README, "Training with GrpoTrainer")')
    .requiredOption('--config <file>', 'YAML config (e.g. configs/grpo_config.yaml)')
    .option('--model <file>', 'base model GGUF (overrides the config\'s model)')
    .option('--spider <dir>', 'Spider directory (train_spider.json, dev.json, database/); default $SPIDER_DIR')
    .option('--max-samples <n>', 'use only the first N training questions', parseIntArg('--max-samples', 1))
    .option('--resume <dir>', 'continue a run from RUN/checkpoint-N')
    .option('--set <key=value>', 'override a config key (repeatable), e.g. --set max_steps=20 --set lora.rank=8',
      (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--json', 'print the result as JSON')
    .option('--nproc-per-node <n>', 'start N ranks of a data-parallel run on this machine (one GPU each; prompts_per_step is per rank)',
      parseIntArg('--nproc-per-node', 1))
    .action(async (o: TrainCliOptions) => {
      if (o.nprocPerNode !== undefined && o.nprocPerNode > 1) {
        if (distEnvFrom() !== null) throw new Sqlr1Error('ERR_CONFIG', '--nproc-per-node starts its own ranks: it cannot run inside a launcher that set WORLD_SIZE');
        // Each rank runs this same command without --nproc-per-node.
        const args = process.argv.slice(2);
        const rankArgs: string[] = [];
        for (let i = 0; i < args.length; i++) {
          if (args[i] === '--nproc-per-node') i++;
          else if (!args[i]!.startsWith('--nproc-per-node=')) rankArgs.push(args[i]!);
        }
        process.exitCode = await launchLocal({ nproc: o.nprocPerNode, argv: [...process.execArgv, process.argv[1]!, ...rankArgs] });
        return;
      }
      const dist = distEnvFrom();
      if (dist) pinLocalDevice(dist);
      const overrides: Record<string, unknown> = {};
      for (const s of o.set) {
        const [k, v] = parseOverride(s);
        overrides[k] = v;
      }
      if (o.model) overrides['model'] = o.model;
      // A resumed run keeps writing into the checkpoint's run directory unless told otherwise.
      if (o.resume && !('output_dir' in overrides) && !('outputDir' in overrides)) overrides['output_dir'] = dirname(resolve(o.resume));
      const config = await loadConfig(o.config, { overrides });
      if (!config.model) throw new Sqlr1Error('ERR_CONFIG', `${o.config}: no model: set model in the config or pass --model F.gguf`);
      const root = o.spider ?? process.env.SPIDER_DIR;
      if (!root) throw new Sqlr1Error('ERR_INVALID_ARG', 'train needs the Spider directory: --spider DIR or SPIDER_DIR (for a run without data: sqlr1 demo)');
      const warn = (m: string) => process.stderr.write(`sqlr1: ${m}\n`);
      const trainDataset = await SpiderDataset.load({ root, split: 'train', ...(o.maxSamples ? { maxSamples: o.maxSamples } : {}), onWarning: warn });
      const evalDataset = await SpiderDataset.load({ root, split: 'dev', ...(config.evalSamples > 0 ? { maxSamples: config.evalSamples } : {}), onWarning: warn });
      const { model, lora, ...rest } = config;
      const processGroup = dist ? await ProcessGroup.connect(dist) : undefined;
      let trainer: GrpoTrainer;
      try {
        trainer = await GrpoTrainer.create({
          ...rest, model: model!, lora, trainDataset, evalDataset, ...(o.resume ? { resumeFrom: o.resume } : {}), ...(processGroup ? { processGroup } : {}),
        });
      } catch (e) {
        processGroup?.close();
        throw e;
      }
      const controller = new AbortController();
      let interrupts = 0;
      const onSigint = () => {
        interrupts++;
        if (interrupts === 1) {
          process.stderr.write('\nsqlr1: stopping after this step (checkpoint follows); Ctrl-C again to exit now\n');
          controller.abort();
        } else process.exit(130);
      };
      process.on('SIGINT', onSigint);
      try {
        const result = await trainer.train({ signal: controller.signal });
        if (dist && dist.rank !== 0) return;   // rank 0 speaks for the run
        if (o.json) printJson(result);
        else {
          process.stderr.write(`${result.aborted ? 'stopped' : 'done'} at step ${result.step} (epoch ${result.epoch.toFixed(2)}); adapter ${result.adapterPath}` +
            `${result.bestMetric !== null ? `; best eval execution accuracy ${result.bestMetric.toFixed(3)}` : ''}` +
            `${result.reportPath ? `; report ${result.reportPath}` : ''}\n`);
        }
      } finally {
        process.off('SIGINT', onSigint);
        await trainer.dispose();
        processGroup?.close();
      }
    });
}
