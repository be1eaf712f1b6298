/** Runs `sqlr1` subcommands in this process, for tests that check what a command prints. */
import { Command } from 'commander';

/** Registers one command on a fresh program, runs `args`, and returns its stdout (stderr's progress is dropped). */
export async function runCommand(register: (p: Command) => void, args: string[]): Promise<string> {
  const program = new Command('sqlr1').exitOverride();
  register(program);
  const chunks: string[] = [];
  const write = { out: process.stdout.write, err: process.stderr.write };
  process.stdout.write = ((c: string | Uint8Array) => { chunks.push(String(c)); return true; }) as typeof process.stdout.write;
  process.stderr.write = (() => true) as typeof process.stderr.write;
  try {
    await program.parseAsync(args, { from: 'user' });
  } finally {
    process.stdout.write = write.out;
    process.stderr.write = write.err;
  }
  return chunks.join('');
}
