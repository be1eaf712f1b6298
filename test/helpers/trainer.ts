/** The tiny CPU setup the GrpoTrainer tests share: an f32 tiny model, the toy dataset and options for short steps. */
import { join } from 'node:path';
import { loadModel, type Model } from '../../lib/model/index.js';
import type { GrpoTrainerOptions } from '../../lib/grpo/trainer.js';
import { toyDataset } from '../../lib/demo/demo.js';
import { tempDir, tinyModel } from './native.js';

export async function tinyTrainerSetup(t: { teardown(fn: () => unknown): void }): Promise<{ dir: string; model: Model; data: ReturnType<typeof toyDataset>; base: GrpoTrainerOptions }> {
  const dir = tempDir(t);
  const model: Model = await loadModel(await tinyModel(dir, 'f32'), { device: 'cpu', log: () => undefined });
  t.teardown(() => model.dispose());
  const data = toyDataset(dir);
  const base: GrpoTrainerOptions = {
    model, trainDataset: data, outputDir: join(dir, 'run'), maxSteps: 1, promptsPerStep: 4, numGenerations: 3, maxCompletionLength: 8,
    temperature: 1, beta: 0.05, learningRate: 1e-2, lrSchedulerType: 'constant', lora: { rank: 4, alpha: 8 }, seed: 5, progress: false,
    report: false, log: () => undefined, maxPromptLength: 1024,
    // Every sample gets its own reward, so every group has a spread and every sequence a non-zero advantage.
    rewardFunctions: [{ name: 'length', fn: (ctx) => ctx.completion.length / 10 }],
  };
  return { dir, model, data, base };
}
