import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { Sqlr1Error } from '../../errors.js';
import { Tokenizer } from '../../tokenizer/index.js';
import { printJson } from '../util.js';

export function register(program: Command): void {
  program
    .command('tokenize')
    .description('token ids of a text (or of each line of a file) with the model\'s tokenizer')
    .requiredOption('--model <file>', 'GGUF model (only its tokenizer metadata is read)')
    .option('--text <text>', 'text to tokenize')
    .option('--file <file>', 'one input text per line; prints one JSON array per line')
    .option('--add-special', 'add BOS/EOS as the model asks (default off)')
    .option('--no-parse-special', 'treat special-token texts like <|im_start|> as plain text')
    .option('--json', 'machine-readable output (the default format is already JSON arrays)')
    .action(async (o: { model: string; text?: string; file?: string; addSpecial?: boolean; parseSpecial: boolean }) => {
      if ((o.text === undefined) === (o.file === undefined)) throw new Sqlr1Error('ERR_INVALID_ARG', 'give exactly one of --text or --file');
      const tok = await Tokenizer.fromGguf(o.model);
      const opts = { addSpecial: o.addSpecial ?? false, parseSpecial: o.parseSpecial };
      if (o.text !== undefined) {
        printJson(tok.encode(o.text, opts));
        return;
      }
      const lines = readFileSync(o.file!, 'utf8').split('\n');
      if (lines.at(-1) === '') lines.pop();
      process.stdout.write(lines.map((l) => JSON.stringify(tok.encode(l, opts))).join('\n') + (lines.length ? '\n' : ''));
    });
}
