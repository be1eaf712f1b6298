/**
 * `--nproc-per-node N`: starts N copies of this command on this machine as ranks 0..N-1 of one data-parallel run
 * (torchrun's variables, a free port on the loopback, NVLink multicast off), forwards their output, and ends the
 * others as soon as one fails. Resolves to the exit code: 0 when every rank succeeded, else the first failure's.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';

/** A TCP port free on the loopback at the time of the call (the launcher's MASTER_PORT). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface LaunchOptions {
  nproc: number;
  /** The command each rank runs (this Node and its arguments, without --nproc-per-node). */
  argv: readonly string[];
  /** Rank 0's port (default: a free one). */
  masterPort?: number;
  env?: NodeJS.ProcessEnv;
}

export async function launchLocal(options: LaunchOptions): Promise<number> {
  const port = options.masterPort ?? await freePort();
  const base = options.env ?? process.env;
  const children: ChildProcess[] = [];
  const exits = Array.from({ length: options.nproc }, (_, rank) => new Promise<{ rank: number; code: number }>((resolve) => {
    const child = spawn(process.execPath, [...options.argv], {
      stdio: 'inherit',
      env: {
        ...base, WORLD_SIZE: String(options.nproc), RANK: String(rank), LOCAL_RANK: String(rank), LOCAL_WORLD_SIZE: String(options.nproc),
        MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), NCCL_NVLS_ENABLE: '0',
      },
    });
    children.push(child);
    child.on('exit', (code, signal) => resolve({ rank, code: code ?? (signal ? 128 + 15 : 1) }));
    child.on('error', () => resolve({ rank, code: 1 }));
  }));
  // Ctrl-C reaches every rank (one process group on the terminal): they agree to stop after the step in progress,
  // so the launcher waits for them rather than exiting.
  const ignore = () => undefined;
  process.on('SIGINT', ignore);
  let first: { rank: number; code: number } | undefined;
  await Promise.all(exits.map((p) => p.then((r) => {
    if (r.code !== 0 && !first) {
      first = r;
      process.stderr.write(`sqlr1: rank ${r.rank} exited with code ${r.code}; stopping the other ranks\n`);
      for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
    }
  }))).finally(() => process.off('SIGINT', ignore));
  return first?.code ?? 0;
}
