/**
 * NCCL as a process group's transport for float buffers (gradients, the initial adapter) between the GPUs of a
 * data-parallel run. The library is opened at run time and only here: single-GPU installs need nothing new. Every
 * rank reports whether it could open NCCL, and which version, before any rank joins the communicator, so that a
 * missing or mismatched NCCL on one rank is one ERR_NCCL on every rank (naming the rank and the library) instead
 * of a hang; rank 0's unique id travels over the group's TCP connection.
 */
import { Sqlr1Error } from '../errors.js';
import { callNative, getBinding } from '../native/binding.js';
import type { NativeNccl, NativeNcclCommunicator } from '../native/types.js';
import type { ProcessGroup, TensorTransport } from './group.js';

export interface NcclOptions {
  /** The CUDA device of this rank (default 0: `pinLocalDevice` leaves each rank one visible device). */
  device?: number;
  /** The library to open (default: SQLR1_NCCL_LIBRARY, else libnccl.so.2 on the loader's path). */
  library?: string;
  /** Longest wait for the other ranks in one operation, joining included (default: the group's timeout). */
  timeoutMs?: number;
  /** The native NCCL binding (default: the CUDA addon's); tests pass their own. */
  native?: NativeNccl;
}

interface RankNccl {
  error?: string;
  version?: string;
  path?: string;
  /** Rank 0's unique id, base64. */
  id?: string;
}

/** Joins every rank of `group` into one NCCL communicator (all ranks call it together). */
export async function connectNccl(group: ProcessGroup, options: NcclOptions = {}): Promise<TensorTransport> {
  const native = options.native ?? getBinding('cuda').binding.nccl;
  const library = options.library ?? (process.env.SQLR1_NCCL_LIBRARY || undefined);
  const timeoutMs = options.timeoutMs ?? group.timeout;
  const mine: RankNccl = {};
  try {
    const lib = native.load(library);
    mine.version = lib.versionString;
    mine.path = lib.path;
    if (group.rank === 0) mine.id = Buffer.from(native.uniqueId(library)).toString('base64');
  } catch (e) {
    mine.error = (e as Error).message;
  }
  const ranks = await group.allGather(mine);
  const broken = ranks.flatMap((r, i) => (r.error !== undefined ? [`rank ${i}: ${r.error}`] : []));
  if (broken.length > 0) throw new Sqlr1Error('ERR_NCCL', `NCCL cannot be used on every rank: ${broken.join('; ')}`);
  if (new Set(ranks.map((r) => r.version)).size > 1) {
    throw new Sqlr1Error('ERR_NCCL', `the ranks opened different NCCL versions (every rank needs the same): ${ranks.map((r, i) => `rank ${i}: ${r.version} (${r.path})`).join(', ')}`);
  }
  const id = Uint8Array.from(Buffer.from(ranks[0]!.id!, 'base64'));
  let timer: NodeJS.Timeout | undefined;
  const comm = await Promise.race([
    callNative(() => native.init({ id, nranks: group.worldSize, rank: group.rank, device: options.device ?? 0, ...(library ? { library } : {}) })),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Sqlr1Error('ERR_DISTRIBUTED', `NCCL: not every rank joined the communicator within ${timeoutMs} ms`)), timeoutMs);
    }),
  ]).finally(() => clearTimeout(timer));
  return new NcclTransport(comm, timeoutMs);
}

class NcclTransport implements TensorTransport {
  readonly name = 'nccl';
  constructor(private readonly comm: NativeNcclCommunicator, private readonly timeoutMs: number) {}

  allReduceSum(buf: Float32Array): Promise<void> {
    return callNative(() => this.comm.allReduceSum(buf, this.timeoutMs));
  }

  broadcast(buf: Float32Array): Promise<void> {
    return callNative(() => this.comm.broadcast(buf, 0, this.timeoutMs));
  }

  close(): void {
    this.comm.close();
  }
}

/**
 * Picks what moves the float buffers for `group` (every rank calls it together, after loading its model):
 * `backend` 'auto' is NCCL when the run is on CUDA, else TCP. The ranks must run on the same kind of device.
 * Resolves to the group's backend.
 */
export async function chooseTransport(group: ProcessGroup, device: 'cpu' | 'cuda', backend: 'auto' | 'nccl' | 'tcp', options: NcclOptions = {}): Promise<string> {
  const devices = await group.allGather(device);
  if (new Set(devices).size > 1) {
    throw new Sqlr1Error('ERR_DISTRIBUTED', `the ranks run on different devices (${devices.map((d, i) => `rank ${i}: ${d}`).join(', ')}): give every rank the same device`);
  }
  const pick = backend === 'auto' ? (device === 'cuda' ? 'nccl' : 'tcp') : backend;
  if (pick === 'nccl') {
    if (device !== 'cuda') throw new Sqlr1Error('ERR_CONFIG', "ddp_backend 'nccl' moves data between GPUs: this run is on the CPU (use 'tcp' or 'auto')");
    group.useTransport(await connectNccl(group, options));
  }
  return group.backend;
}
