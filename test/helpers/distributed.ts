/** Process groups over loopback for tests: every rank in this process, rank 0 started last. */
import type { DistEnv } from '../../lib/distributed/env.js';
import { ProcessGroup } from '../../lib/distributed/group.js';
import { freePort } from '../../lib/distributed/launch.js';

export { freePort };

export async function groupOf(n: number, options: { timeoutMs?: number } = {}): Promise<ProcessGroup[]> {
  const port = await freePort();
  const env = (rank: number): DistEnv => ({ rank, worldSize: n, localRank: rank, masterAddr: '127.0.0.1', masterPort: port });
  // The others may start first: they retry until rank 0 listens.
  const others = Array.from({ length: n - 1 }, (_, i) => ProcessGroup.connect(env(i + 1), options));
  await new Promise((r) => setTimeout(r, 50));
  const first = ProcessGroup.connect(env(0), options);
  return Promise.all([first, ...others]);
}
