/**
 * The process's place in a data-parallel run, from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
 * MASTER_ADDR, MASTER_PORT), so that torchrun, Slurm or Kubernetes launchers work as they do for PyTorch.
 */
import { Sqlr1Error } from '../errors.js';

export interface DistEnv {
  rank: number;
  worldSize: number;
  /** The GPU this process uses on its machine. */
  localRank: number;
  masterAddr: string;
  masterPort: number;
}

/** The run's layout, or null for a single process (WORLD_SIZE unset or 1). Malformed values are ERR_CONFIG. */
export function distEnvFrom(env: NodeJS.ProcessEnv = process.env): DistEnv | null {
  if (env.WORLD_SIZE === undefined || env.WORLD_SIZE === '' || env.WORLD_SIZE === '1') return null;
  const int = (name: string, min: number, max: number, fallback?: number): number => {
    const v = env[name];
    if (v === undefined || v === '') {
      if (fallback !== undefined) return fallback;
      throw new Sqlr1Error('ERR_CONFIG', `${name} must be set when WORLD_SIZE is ${env.WORLD_SIZE}`);
    }
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < min || n > max) throw new Sqlr1Error('ERR_CONFIG', `${name} must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
    return n;
  };
  const worldSize = int('WORLD_SIZE', 1, 65536);
  const rank = int('RANK', 0, worldSize - 1);
  const localRank = int('LOCAL_RANK', 0, 65535, rank);
  const masterPort = int('MASTER_PORT', 1, 65535);
  const masterAddr = env.MASTER_ADDR;
  if (!masterAddr) throw new Sqlr1Error('ERR_CONFIG', `MASTER_ADDR must be set when WORLD_SIZE is ${worldSize}`);
  return { rank, worldSize, localRank, masterAddr, masterPort };
}

/** The half-open range [start, end) of a step's `total` prompt groups that `rank` owns (contiguous, equal shares). */
export function shardRange(total: number, rank: number, worldSize: number): { start: number; end: number } {
  if (!Number.isInteger(total) || !Number.isInteger(worldSize) || worldSize < 1 || total % worldSize !== 0) {
    throw new Sqlr1Error('ERR_CONFIG', `${total} prompt groups cannot be shared equally by ${worldSize} ranks`);
  }
  if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize) throw new Sqlr1Error('ERR_INVALID_ARG', `rank ${rank} out of range [0, ${worldSize})`);
  const per = total / worldSize;
  return { start: rank * per, end: (rank + 1) * per };
}

/**
 * Points this process at its GPU before the native addon loads: CUDA_VISIBLE_DEVICES becomes LOCAL_RANK (or the
 * LOCAL_RANK-th entry of a list the launcher set), so every rank's `device: 'cuda'` is a GPU of its own. Returns
 * the value set.
 */
export function pinLocalDevice(dist: DistEnv, env: NodeJS.ProcessEnv = process.env): string {
  const listed = env.CUDA_VISIBLE_DEVICES?.split(',').map((x) => x.trim()).filter(Boolean);
  if (listed && listed.length > 0) {
    if (listed.length === 1) return listed[0]!;   // the launcher already gave this process one device
    const mine = listed[dist.localRank];
    if (mine === undefined) throw new Sqlr1Error('ERR_CONFIG', `LOCAL_RANK ${dist.localRank} has no entry in CUDA_VISIBLE_DEVICES=${env.CUDA_VISIBLE_DEVICES}`);
    env.CUDA_VISIBLE_DEVICES = mine;
    return mine;
  }
  env.CUDA_VISIBLE_DEVICES = String(dist.localRank);
  return env.CUDA_VISIBLE_DEVICES;
}
