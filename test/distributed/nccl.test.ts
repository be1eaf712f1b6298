/**
 * NCCL as the transport of a data-parallel run, without a GPU: the native loader on stand-in libraries (missing,
 * a function missing, too old, and one that loads: the CPU build then refuses to join), and the group's use of a
 * transport through a fake native binding (ranks that cannot open NCCL or open different versions fail on every
 * rank alike; float buffers move through the transport, the rest stays on TCP). The real library runs with one
 * rank on the GPU machine (nccl-cuda.test.ts).
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chooseTransport, connectNccl } from '../../lib/distributed/nccl.js';
import type { NativeNccl, NativeNcclCommunicator } from '../../lib/native/types.js';
import { binding } from '../helpers/native.js';
import { groupOf } from '../helpers/distributed.js';

const source = fileURLToPath(new URL('../fixtures/nccl/fake_nccl.c', import.meta.url));

function fakeLibrary(dir: string, name: string, defines: string[]): string {
  const out = join(dir, name);
  execFileSync('cc', ['-shared', '-fPIC', '-O0', ...defines.map((d) => `-D${d}`), source, '-o', out]);
  return out;
}

t.test('the loader: a missing library, a missing function, an old version, then one that loads', async (t) => {
  const nccl = binding('cpu').nccl;
  const dir = mkdtempSync(join(tmpdir(), 'sqlr1-nccl-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  t.throws(() => nccl.load(join(dir, 'libnccl.so.2')), { code: 'ERR_NCCL', message: /cannot load NCCL \(.*libnccl\.so\.2\).*SQLR1_NCCL_LIBRARY/ });
  const noId = fakeLibrary(dir, 'no-id.so', ['FAKE_VERSION=22304', 'FAKE_NO_UNIQUE_ID']);
  t.throws(() => nccl.load(noId), { code: 'ERR_NCCL', message: /has no ncclGetUniqueId: it is not an NCCL library/ });
  const old = fakeLibrary(dir, 'old.so', ['FAKE_VERSION=21705']);
  t.throws(() => nccl.load(old), { code: 'ERR_NCCL', message: /is NCCL 2\.17\.5, older than the 2\.18\.0 needed/ });
  const good = fakeLibrary(dir, 'good.so', ['FAKE_VERSION=22304']);
  t.same(nccl.load(good), { path: good, version: 22304, versionString: '2.23.4' });
  t.same(nccl.load(good).path, good, 'loaded once; the same path again is the same library');
  t.throws(() => nccl.load(old), { code: 'ERR_NCCL', message: /already loaded from .*good\.so/ });
  const id = nccl.uniqueId(good);
  t.equal(id.length, 128);
  t.ok(id.every((b) => b === 7), "the library's id, byte for byte");
  await t.rejects(nccl.init({ id, nranks: 1, rank: 0, device: 0, library: good }), { code: 'ERR_NCCL', message: /this is the CPU build/ });
  // Bad arguments throw at the call, before anything is queued.
  t.throws(() => nccl.init({ id: new Uint8Array(16), nranks: 1, rank: 0, device: 0 }), { code: 'ERR_INVALID_ARG', message: /128 bytes/ });
  t.throws(() => nccl.init({ id, nranks: 2, rank: 2, device: 0 }), { code: 'ERR_INVALID_ARG', message: /rank must be an integer in \[0, nranks\)/ });
});

/**
 * A fake native NCCL for the ranks of one process: `init` joins a shared rendezvous, and each collective waits
 * for every rank's buffer before answering (as NCCL does).
 */
function fakeNccl(n: number, opts: { version?: (rank: number) => string; loadError?: number; failAllReduce?: boolean } = {}) {
  const calls: string[] = [];
  let pending: { bufs: Float32Array[]; done: (() => void)[] } = { bufs: [], done: [] };
  const collective = (rank: number, buf: Float32Array, combine: (bufs: Float32Array[]) => Float32Array) =>
    new Promise<void>((resolve) => {
      pending.bufs[rank] = buf;
      pending.done.push(resolve);
      if (pending.done.length < n) return;
      const { bufs, done } = pending;
      pending = { bufs: [], done: [] };
      const out = combine(bufs);
      for (const b of bufs) b.set(out);
      for (const d of done) d();
    });
  const natives = Array.from({ length: n }, (_, rank): NativeNccl => ({
    load: () => {
      if (opts.loadError === rank) throw Object.assign(new Error('cannot load NCCL (libnccl.so.2): not found'), { code: 'ERR_NCCL' });
      const versionString = opts.version?.(rank) ?? '2.23.4';
      return { path: '/fake/libnccl.so.2', version: 0, versionString };
    },
    uniqueId: () => new Uint8Array(128).fill(rank + 1),
    init: async (o) => {
      calls.push(`init rank ${o.rank} of ${o.nranks}, id ${o.id[0]}`);
      const comm: NativeNcclCommunicator = {
        allReduceSum: async (buf) => {
          calls.push(`allReduceSum ${rank}`);
          if (opts.failAllReduce && rank === 1) throw Object.assign(new Error('ncclAllReduce failed: remote process exited'), { code: 'ERR_DISTRIBUTED' });
          await collective(rank, buf, (bufs) => bufs.reduce((a, b) => a.map((x, i) => x + b[i]!)));
        },
        broadcast: async (buf, root) => {
          calls.push(`broadcast ${rank}`);
          await collective(rank, buf, (bufs) => Float32Array.from(bufs[root]!));
        },
        close: () => { calls.push(`close ${rank}`); },
      };
      return comm;
    },
  }));
  return { natives, calls };
}

t.test('a group on a transport: float buffers through it, the rest over TCP', async (t) => {
  const g = await groupOf(2);
  t.teardown(() => g.forEach((x) => x.close()));
  const { natives, calls } = fakeNccl(2);
  t.same(g.map((x) => x.backend), ['tcp', 'tcp']);
  await Promise.all(g.map(async (x, r) => x.useTransport(await connectNccl(x, { native: natives[r]! }))));
  t.same(g.map((x) => x.backend), ['nccl', 'nccl']);
  t.same(calls.filter((c) => c.startsWith('init')).sort(), ['init rank 0 of 2, id 1', 'init rank 1 of 2, id 1'], "every rank joins with rank 0's id");
  const bufs = g.map((x) => Float32Array.from([1, 2, 3], (v) => v * (x.rank + 1)));
  await Promise.all(g.map((x, r) => x.allReduceSum(bufs[r]!)));
  for (const b of bufs) t.same([...b], [3, 6, 9]);
  await Promise.all(g.map((x, r) => x.allReduceMean(bufs[r]!)));
  for (const b of bufs) t.same([...b], [3, 6, 9], 'the mean divides the transport sum');
  const w = g.map((x) => Float32Array.from([x.rank + 0.5]));
  await Promise.all(g.map((x, r) => x.broadcast(w[r]!)));
  t.same(w.map((b) => b[0]), [0.5, 0.5], "rank 0's values everywhere");
  t.same(calls.filter((c) => !c.startsWith('init')).length, 6, 'two all-reduces and a broadcast per rank went through the transport');
  t.same(await Promise.all(g.map((x) => x.allGather(x.rank * 10))), [[0, 10], [0, 10]], 'small values still over TCP');
  g.forEach((x) => x.close());
  t.same(calls.filter((c) => c.startsWith('close')).sort(), ['close 0', 'close 1'], 'closing the group closes the transport');
});

t.test('a transport failure fails the group on that rank', async (t) => {
  const g = await groupOf(2, { timeoutMs: 2000 });
  t.teardown(() => g.forEach((x) => x.close()));
  const { natives } = fakeNccl(2, { failAllReduce: true });
  await Promise.all(g.map(async (x, r) => x.useTransport(await connectNccl(x, { native: natives[r]! }))));
  const bufs = g.map(() => new Float32Array(4));
  await t.rejects(g[1]!.allReduceSum(bufs[1]!), { code: 'ERR_DISTRIBUTED', message: /remote process exited/ });
  await t.rejects(g[1]!.allGather(1), { code: 'ERR_DISTRIBUTED', message: /remote process exited/ }, 'the group stays failed');
  await t.rejects(g[0]!.allGather(0), { code: 'ERR_DISTRIBUTED' }, 'and the other rank hears of it at its next call');
});

t.test('NCCL missing on one rank, or different versions: ERR_NCCL on every rank, before anyone joins', async (t) => {
  for (const [what, opts, msg] of [
    ['missing on rank 1', { loadError: 1 }, /NCCL cannot be used on every rank: rank 1: cannot load NCCL \(libnccl\.so\.2\)/],
    ['versions differ', { version: (r: number) => (r === 0 ? '2.23.4' : '2.21.5') }, /different NCCL versions.*rank 0: 2\.23\.4.*rank 1: 2\.21\.5/],
  ] as const) {
    const g = await groupOf(2);
    const { natives, calls } = fakeNccl(2, opts);
    const results = await Promise.allSettled(g.map((x, r) => connectNccl(x, { native: natives[r]! })));
    for (const [r, res] of results.entries()) {
      t.equal(res.status, 'rejected', `${what}: rank ${r} fails`);
      if (res.status === 'rejected') t.match(res.reason, { code: 'ERR_NCCL', message: msg }, `${what}: rank ${r}'s error`);
    }
    t.same(calls, [], `${what}: no rank joined a communicator`);
    g.forEach((x) => x.close());
  }
});

t.test('chooseTransport: TCP on the CPU, NCCL on CUDA; devices must agree', async (t) => {
  const g = await groupOf(2);
  t.teardown(() => g.forEach((x) => x.close()));
  const { natives, calls } = fakeNccl(2);
  t.same(await Promise.all(g.map((x, r) => chooseTransport(x, 'cpu', 'auto', { native: natives[r]! }))), ['tcp', 'tcp']);
  t.same(calls, [], 'auto on the CPU never opens NCCL');
  const nccl = await Promise.allSettled(g.map((x, r) => chooseTransport(x, 'cpu', 'nccl', { native: natives[r]! })));
  for (const res of nccl) t.match(res, { status: 'rejected', reason: { code: 'ERR_CONFIG', message: /ddp_backend 'nccl'.*on the CPU/ } });
  const mixed = await Promise.allSettled(g.map((x, r) => chooseTransport(x, r === 0 ? 'cuda' : 'cpu', 'auto', { native: natives[r]! })));
  for (const res of mixed) t.match(res, { status: 'rejected', reason: { code: 'ERR_DISTRIBUTED', message: /rank 0: cuda, rank 1: cpu/ } });
  t.same(await Promise.all(g.map((x, r) => chooseTransport(x, 'cuda', 'auto', { native: natives[r]! }))), ['nccl', 'nccl']);
});

t.test('a group of one', async (t) => {
  const [g] = await groupOf(1);
  t.teardown(() => g!.close());
  t.same(await g!.allGather('x'), ['x'], 'rank 0 alone connects at once');
});
