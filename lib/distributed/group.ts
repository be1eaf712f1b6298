/**
 * The ranks of a data-parallel run as one group over TCP: rank 0 listens on MASTER_ADDR:MASTER_PORT and the others
 * connect. On that connection: collectives, each combined on rank 0 in rank order so that every rank receives the
 * same bytes: all-reduce (sum or mean), broadcast from rank 0, all-gather, metric reduction and a barrier. The
 * float buffers' all-reduce and broadcast (gradients, the initial adapter) can move to a faster transport instead
 * (`useTransport`: NCCL between GPUs, lib/distributed/nccl.ts); what is small stays on TCP. Every rank calls the
 * same collectives in the same order; a rank that dies or falls silent ends the others' pending calls with
 * ERR_DISTRIBUTED (a closed connection at once, silence after `timeoutMs`), never a hang.
 */
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { Sqlr1Error } from '../errors.js';
import type { DistEnv } from './env.js';

const Kind = { Hello: 1, Welcome: 2, Data: 3 } as const;
type Kind = (typeof Kind)[keyof typeof Kind];
const HEADER = 9;  // u32 payload length, u8 kind, u32 sequence number

interface Frame { kind: Kind; seq: number; payload: Buffer }

export interface GroupOptions {
  /** Longest wait for a peer in any call, connecting included (default 300000 ms). */
  timeoutMs?: number;
}

/** Moves float buffers between the ranks (every rank calls the same operations in the same order). */
export interface TensorTransport {
  /** 'nccl', say: the group's `backend`. */
  readonly name: string;
  /** `buf` becomes the element-wise sum over ranks. */
  allReduceSum(buf: Float32Array): Promise<void>;
  /** `buf` becomes rank 0's. */
  broadcast(buf: Float32Array): Promise<void>;
  close(): void;
}

function distError(msg: string): Sqlr1Error {
  return new Sqlr1Error('ERR_DISTRIBUTED', msg);
}

/** One connection, read as frames. */
class Peer {
  private buffered: Buffer = Buffer.alloc(0);
  private frames: Frame[] = [];
  private waiters: { resolve: (f: Frame) => void; reject: (e: Error) => void }[] = [];
  private failure: Error | undefined;

  constructor(readonly socket: Socket, public name: string, onFail: (e: Error) => void) {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => {
      this.buffered = this.buffered.length ? Buffer.concat([this.buffered, d]) : d;
      while (this.buffered.length >= HEADER) {
        const len = this.buffered.readUInt32LE(0);
        if (this.buffered.length < HEADER + len) break;
        const frame = { kind: this.buffered.readUInt8(4) as Kind, seq: this.buffered.readUInt32LE(5), payload: this.buffered.subarray(HEADER, HEADER + len) };
        this.buffered = this.buffered.subarray(HEADER + len);
        const w = this.waiters.shift();
        if (w) w.resolve(frame); else this.frames.push(frame);
      }
    });
    const lost = (why: string) => onFail(distError(`${this.name} ${why}`));
    socket.on('close', () => lost('disconnected'));
    socket.on('error', (e) => lost(`connection failed: ${e.message}`));
  }

  fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    for (const w of this.waiters.splice(0)) w.reject(e);
    this.socket.destroy();
  }

  send(kind: Kind, seq: number, payload: Uint8Array): void {
    const head = Buffer.alloc(HEADER);
    head.writeUInt32LE(payload.byteLength, 0);
    head.writeUInt8(kind, 4);
    head.writeUInt32LE(seq, 5);
    this.socket.write(Buffer.concat([head, payload]));
  }

  recv(timeoutMs: number, what: string): Promise<Frame> {
    if (this.failure) return Promise.reject(this.failure);
    const ready = this.frames.shift();
    if (ready) return Promise.resolve(ready);
    return new Promise((resolve, reject) => {
      const w = {
        resolve: (f: Frame) => { clearTimeout(timer); resolve(f); },
        reject: (e: Error) => { clearTimeout(timer); reject(e); },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(distError(`timed out after ${timeoutMs} ms waiting for ${this.name} in ${what}`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }
}

export class ProcessGroup {
  private seq = 0;
  private failure: Error | undefined;
  private transport: TensorTransport | undefined;

  private constructor(
    readonly rank: number,
    readonly worldSize: number,
    private readonly peers: Peer[],   // rank 0: one per other rank (index rank - 1); others: [rank 0]
    private readonly server: Server | undefined,
    private readonly timeoutMs: number,
  ) {}

  /** Joins the group: rank 0 waits for every other rank, the others connect (retrying until rank 0 listens). */
  static async connect(env: DistEnv, options: GroupOptions = {}): Promise<ProcessGroup> {
    const timeoutMs = options.timeoutMs ?? 300_000;
    const where = `${env.masterAddr}:${env.masterPort}`;
    let group: ProcessGroup | undefined;
    const onFail = (e: Error) => group?.fail(e);
    if (env.rank === 0) {
      const server = createServer();
      const peers: Peer[] = new Array(env.worldSize - 1);
      await new Promise<void>((resolve, reject) => {
        server.once('error', (e) => reject(distError(`rank 0 could not listen on ${where}: ${e.message}`)));
        server.listen(env.masterPort, env.masterAddr, () => resolve());
      });
      let joined = 0;
      const allJoined = new Promise<void>((resolve, reject) => {
        if (env.worldSize === 1) { resolve(); return; }
        const timer = setTimeout(() => reject(distError(`timed out after ${timeoutMs} ms: ${joined} of ${env.worldSize - 1} ranks joined at ${where}`)), timeoutMs);
        server.on('connection', (socket) => {
          const peer = new Peer(socket, 'a rank that was joining', onFail);
          peer.recv(timeoutMs, 'joining').then((f) => {
            const r = f.payload.length === 4 ? f.payload.readUInt32LE(0) : -1;
            if (f.kind !== Kind.Hello || r < 1 || r >= env.worldSize || peers[r - 1]) {
              peer.fail(distError(`rank 0 refused a connection announcing rank ${r}`));
              return;
            }
            peer.name = `rank ${r}`;
            peers[r - 1] = peer;
            if (++joined === env.worldSize - 1) { clearTimeout(timer); resolve(); }
          }, () => undefined);
        });
      });
      try {
        await allJoined;
      } catch (e) {
        for (const p of peers) p?.fail(e as Error);
        server.close();
        throw e;
      }
      group = new ProcessGroup(0, env.worldSize, peers, server, timeoutMs);
      for (const p of peers) p.send(Kind.Welcome, 0, Buffer.alloc(0));
      return group;
    }
    const deadline = Date.now() + timeoutMs;
    let socket: Socket | undefined;
    let last = '';
    while (!socket) {
      try {
        socket = await new Promise<Socket>((resolve, reject) => {
          const s = netConnect(env.masterPort, env.masterAddr, () => { s.removeAllListeners('error'); resolve(s); });
          s.once('error', reject);
        });
      } catch (e) {
        last = (e as Error).message;
        if (Date.now() > deadline) throw distError(`rank ${env.rank} could not reach rank 0 at ${where} within ${timeoutMs} ms: ${last}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    const master = new Peer(socket, `rank 0 (${where})`, onFail);
    const hello = Buffer.alloc(4);
    hello.writeUInt32LE(env.rank, 0);
    master.send(Kind.Hello, 0, hello);
    const welcome = await master.recv(Math.max(1, deadline - Date.now()), 'joining');
    if (welcome.kind !== Kind.Welcome) throw distError(`rank 0 answered the join with frame kind ${welcome.kind}`);
    group = new ProcessGroup(env.rank, env.worldSize, [master], undefined, timeoutMs);
    return group;
  }

  /** Ends every pending and later call with `e`, and closes the connections (the other ranks then fail too). */
  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    for (const p of this.peers) p?.fail(e);
    this.server?.close();
    this.transport?.close();
  }

  /**
   * Moves the float buffers' all-reduce and broadcast to `transport` from now on (every rank calls it at the same
   * point). A transport's failure fails the group, as a lost connection does.
   */
  useTransport(transport: TensorTransport): void {
    if (this.failure) throw this.failure;
    this.transport?.close();
    this.transport = transport;
  }

  /** What moves the float buffers: 'tcp', or the transport's name. */
  get backend(): string {
    return this.transport?.name ?? 'tcp';
  }

  /** The longest wait for a peer in any call, ms. */
  get timeout(): number {
    return this.timeoutMs;
  }

  /** Runs `op` on the transport; its failure fails the group. */
  private async onTransport(op: (t: TensorTransport) => Promise<void>): Promise<void> {
    if (this.failure) throw this.failure;
    try {
      await op(this.transport!);
    } catch (e) {
      this.fail(e as Error);
      throw e;
    }
  }

  /**
   * Every rank sends `payload`; rank 0 combines them in rank order and every rank receives the same result.
   * `what` names the call in errors.
   */
  private async exchange(what: string, payload: Buffer, combine: (parts: Buffer[]) => Buffer, timeoutMs = this.timeoutMs): Promise<Buffer> {
    if (this.failure) throw this.failure;
    const seq = ++this.seq;
    const call = `${what} #${seq}`;
    try {
      if (this.rank === 0) {
        const parts = [payload];
        for (const p of this.peers) {
          const f = await p.recv(timeoutMs, call);
          if (f.kind !== Kind.Data || f.seq !== seq) throw distError(`${p.name} is out of step: expected ${call}, got call #${f.seq}`);
          parts.push(f.payload);
        }
        const out = combine(parts);
        for (const p of this.peers) p.send(Kind.Data, seq, out);
        return out;
      }
      const master = this.peers[0]!;
      master.send(Kind.Data, seq, payload);
      const f = await master.recv(timeoutMs, call);
      if (f.kind !== Kind.Data || f.seq !== seq) throw distError(`rank 0 is out of step: expected ${call}, got call #${f.seq}`);
      return f.payload;
    } catch (e) {
      this.fail(e as Error);
      throw e;
    }
  }

  /**
   * Replaces `buf` on every rank with the element-wise mean over ranks (over TCP: summed in float64, in rank order;
   * over a transport: its float32 sum, divided).
   */
  async allReduceMean(buf: Float32Array): Promise<void> {
    await this.allReduce(buf, 'mean');
  }

  /** Replaces `buf` on every rank with the element-wise sum over ranks (over TCP: in float64, in rank order). */
  async allReduceSum(buf: Float32Array): Promise<void> {
    await this.allReduce(buf, 'sum');
  }

  private async allReduce(buf: Float32Array, op: 'sum' | 'mean'): Promise<void> {
    if (this.transport) {
      await this.onTransport((t) => t.allReduceSum(buf));
      if (op === 'mean') for (let i = 0; i < buf.length; i++) buf[i] = buf[i]! / this.worldSize;
      return;
    }
    const n = buf.length;
    const what = op === 'sum' ? 'allReduceSum' : 'allReduceMean';
    const out = await this.exchange(what, Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength), (parts) => {
      const acc = new Float64Array(n);
      for (const [r, p] of parts.entries()) {
        if (p.byteLength !== n * 4) throw distError(`rank ${r} sent ${p.byteLength / 4} values to ${what}, rank 0 has ${n}`);
        const v = new Float32Array(p.buffer.slice(p.byteOffset, p.byteOffset + p.byteLength));
        for (let i = 0; i < n; i++) acc[i] += v[i]!;
      }
      const res = new Float32Array(n);
      const div = op === 'mean' ? parts.length : 1;
      for (let i = 0; i < n; i++) res[i] = acc[i]! / div;
      return Buffer.from(res.buffer);
    });
    if (out.byteLength !== n * 4) throw distError(`${what} returned ${out.byteLength / 4} values for ${n}`);
    buf.set(new Float32Array(out.buffer.slice(out.byteOffset, out.byteOffset + out.byteLength)));
  }

  /** Copies rank 0's `buf` into every rank's (rank 0 broadcasts the initial adapter). */
  async broadcast(buf: Float32Array): Promise<void> {
    if (this.transport) return this.onTransport((t) => t.broadcast(buf));
    const out = await this.exchange('broadcast', Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength), (parts) => parts[0]!);
    if (out.byteLength !== buf.byteLength) throw distError(`broadcast: rank 0 sent ${out.byteLength / 4} values, this rank holds ${buf.length}`);
    buf.set(new Float32Array(out.buffer.slice(out.byteOffset, out.byteOffset + out.byteLength)));
  }

  /** Every rank's JSON-serializable `value`, in rank order, on every rank (the same array everywhere). */
  async allGather<T>(value: T): Promise<T[]> {
    const out = await this.exchange('allGather', Buffer.from(JSON.stringify(value)), (parts) =>
      Buffer.from(JSON.stringify(parts.map((p) => JSON.parse(p.toString()) as unknown))));
    return JSON.parse(out.toString()) as T[];
  }

  /** Each metric averaged over ranks (those named in `sum` added up); every rank must report the same names. */
  async reduceMetrics(metrics: Record<string, number>, sum: readonly string[] = []): Promise<Record<string, number>> {
    const out = await this.exchange('reduceMetrics', Buffer.from(JSON.stringify(metrics)), (parts) => {
      const all = parts.map((p) => JSON.parse(p.toString()) as Record<string, number>);
      const keys = Object.keys(all[0]!).sort();
      const res: Record<string, number> = {};
      for (const [r, m] of all.entries()) {
        const k = Object.keys(m).sort();
        if (k.join('\n') !== keys.join('\n')) throw distError(`rank ${r} reports metrics [${k.join(', ')}], rank 0 [${keys.join(', ')}]`);
      }
      for (const k of keys) {
        const total = all.reduce((s, m) => s + m[k]!, 0);
        res[k] = sum.includes(k) ? total : total / all.length;
      }
      return Buffer.from(JSON.stringify(res));
    });
    return JSON.parse(out.toString()) as Record<string, number>;
  }

  /**
   * Returns once every rank has called it (rank 0 writes checkpoints while the others wait here). `timeoutMs`
   * replaces the group's for this call (rank 0's evaluation can outlast it).
   */
  async barrier(timeoutMs?: number): Promise<void> {
    await this.exchange('barrier', Buffer.alloc(0), () => Buffer.alloc(0), timeoutMs);
  }

  /** Closes the connections. Call it on every rank at the end; a later call fails with ERR_DISTRIBUTED. */
  close(): void {
    this.fail(distError(`the group was closed on rank ${this.rank}`));
  }
}
