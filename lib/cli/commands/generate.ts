import type { Command } from 'commander';
import { generate, loadLora, loadModel } from '../../model/index.js';
import { parseChoice, parseFloatArg, parseIntArg, printJson } from '../util.js';

export function register(program: Command): void {
  program
    .command('generate')
    .description('sample a completion for one prompt')
    .requiredOption('--model <file>', 'GGUF model')
    .requiredOption('--prompt <text>', 'prompt text (a user message, rendered with the chat template unless --raw)')
    .option('--lora <file>', 'LoRA adapter GGUF')
    .option('--device <device>', 'auto | cpu | cuda', parseChoice('--device', ['auto', 'cpu', 'cuda'] as const), 'auto')
    .option('--raw', 'no chat template and no special tokens added')
    .option('--max-tokens <n>', 'most new tokens', parseIntArg('--max-tokens', 1), 128)
    .option('--temperature <t>', '0 = greedy', parseFloatArg('--temperature', 0), 0.7)
    .option('--top-k <k>', '0 = off', parseIntArg('--top-k'), 0)
    .option('--top-p <p>', '1 = off', parseFloatArg('--top-p', 0, 1), 1)
    .option('--seed <n>', 'sampling seed', parseIntArg('--seed'), 0)
    .option('--json', 'print { prompt_tokens, tokens, text }')
    .action(async (o: { model: string; prompt: string; lora?: string; device: 'auto' | 'cpu' | 'cuda'; raw?: boolean; maxTokens: number;
      temperature: number; topK: number; topP: number; seed: number; json?: boolean }) => {
      const model = await loadModel(o.model, { device: o.device });
      try {
        const lora = o.lora ? await loadLora(model, o.lora) : null;
        const promptTokens = o.raw
          ? model.tokenizer.encode(o.prompt, { addSpecial: false, parseSpecial: false })
          : model.encodeChat([{ role: 'user', content: o.prompt }]);
        const { completions } = await generate(model, {
          prompts: [promptTokens], lora, maxNewTokens: o.maxTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed,
        });
        const c = completions[0]!;
        if (o.json) printJson({ prompt_tokens: promptTokens, tokens: c.tokens, text: c.text });
        else process.stdout.write(c.text + '\n');
      } finally {
        model.dispose();
      }
    });
}
