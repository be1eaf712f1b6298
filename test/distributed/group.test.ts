/**
 * The rank plumbing of data-parallel training, on the CPU over loopback: torchrun's variables, the shared id
 * from rank 0, collectives that give every rank the same bytes, sharding of prompt groups, and failures (a rank
 * that dies, one that falls silent) that end the others' calls with ERR_DISTRIBUTED instead of a hang.
 */
import t from 'tap';
import { distEnvFrom, shardRange } from '../../lib/distributed/env.js';
import { ProcessGroup } from '../../lib/distributed/group.js';
import { freePort, groupOf } from '../helpers/distributed.js';

t.test('torchrun variables', async (t) => {
  t.equal(distEnvFrom({}), null, 'no WORLD_SIZE: one process');
  t.equal(distEnvFrom({ WORLD_SIZE: '1', RANK: '0' }), null);
  t.same(distEnvFrom({ WORLD_SIZE: '4', RANK: '2', LOCAL_RANK: '1', MASTER_ADDR: 'node0', MASTER_PORT: '29500' }),
    { rank: 2, worldSize: 4, localRank: 1, masterAddr: 'node0', masterPort: 29500 });
  t.equal(distEnvFrom({ WORLD_SIZE: '2', RANK: '1', MASTER_ADDR: 'h', MASTER_PORT: '1' })!.localRank, 1, 'LOCAL_RANK defaults to RANK');
  const bad: [Record<string, string>, RegExp][] = [
    [{ WORLD_SIZE: '2', MASTER_ADDR: 'h', MASTER_PORT: '1' }, /RANK must be set/],
    [{ WORLD_SIZE: '2', RANK: '2', MASTER_ADDR: 'h', MASTER_PORT: '1' }, /RANK must be an integer in \[0, 1\]/],
    [{ WORLD_SIZE: 'two', RANK: '0', MASTER_ADDR: 'h', MASTER_PORT: '1' }, /WORLD_SIZE must be an integer/],
    [{ WORLD_SIZE: '2', RANK: '0', MASTER_PORT: '1' }, /MASTER_ADDR must be set/],
    [{ WORLD_SIZE: '2', RANK: '0', MASTER_ADDR: 'h', MASTER_PORT: '70000' }, /MASTER_PORT must be an integer in \[1, 65535\]/],
  ];
  for (const [env, msg] of bad) t.throws(() => distEnvFrom(env), { code: 'ERR_CONFIG', message: msg }, JSON.stringify(env));
});

t.test('prompt groups are shared out whole and in order', async (t) => {
  t.same([0, 1].map((r) => shardRange(8, r, 2)), [{ start: 0, end: 4 }, { start: 4, end: 8 }]);
  t.same(shardRange(8, 0, 1), { start: 0, end: 8 });
  t.throws(() => shardRange(6, 0, 4), { code: 'ERR_CONFIG' });
  t.throws(() => shardRange(8, 2, 2), { code: 'ERR_INVALID_ARG' });
});

t.test('three ranks: all-reduce, broadcast, metrics, barrier', async (t) => {
  const g = await groupOf(3);
  t.teardown(() => g.forEach((x) => x.close()));
  t.same(g.map((x) => x.rank), [0, 1, 2]);

  const n = 1000;
  const bufs = g.map((x) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * (x.rank + 1)) * 1e3 + x.rank));
  const want = new Float32Array(n);
  for (let i = 0; i < n; i++) want[i] = (bufs[0]![i]! + bufs[1]![i]! + bufs[2]![i]!) / 3;  // float64 sum, in rank order
  await Promise.all(g.map((x, r) => x.allReduceMean(bufs[r]!)));
  for (const [r, b] of bufs.entries()) t.same(Buffer.from(b.buffer), Buffer.from(want.buffer), `rank ${r}: the same bytes as the float64 mean`);

  const w = g.map((x) => Float32Array.from({ length: 5 }, () => x.rank + 0.5));
  await Promise.all(g.map((x, r) => x.broadcast(w[r]!)));
  for (const b of w) t.same([...b], [0.5, 0.5, 0.5, 0.5, 0.5]);

  const sums = g.map((x) => Float32Array.from({ length: n }, (_, i) => Math.cos(i * (x.rank + 2)) * 1e2 - x.rank));
  const wantSum = new Float32Array(n);
  for (let i = 0; i < n; i++) wantSum[i] = sums[0]![i]! + sums[1]![i]! + sums[2]![i]!;  // float64 sum, rounded once
  await Promise.all(g.map((x, r) => x.allReduceSum(sums[r]!)));
  for (const [r, b] of sums.entries()) t.same(Buffer.from(b.buffer), Buffer.from(wantSum.buffer), `rank ${r}: the same bytes as the float64 sum`);

  const m = await Promise.all(g.map((x) => x.reduceMetrics({ reward: x.rank, num_tokens: 10 * (x.rank + 1) }, ['num_tokens'])));
  for (const r of m) t.same(r, { reward: 1, num_tokens: 60 }, 'means, and sums where asked');

  const gathered = await Promise.all(g.map((x) => x.allGather({ rank: x.rank, tokens: [x.rank, 2 * x.rank] })));
  for (const r of gathered) t.same(r, [0, 1, 2].map((k) => ({ rank: k, tokens: [k, 2 * k] })), 'allGather: every rank\'s value, in rank order');

  // Rank 0 "writes a checkpoint" while the others wait at the barrier.
  const order: string[] = [];
  await Promise.all(g.map(async (x) => {
    if (x.rank === 0) { await new Promise((r) => setTimeout(r, 100)); order.push('written'); }
    await x.barrier();
    order.push(`rank ${x.rank} past`);
  }));
  t.equal(order[0], 'written', 'no rank passes the barrier before rank 0 reaches it');
});

t.test('a rank that dies ends the others\' calls with ERR_DISTRIBUTED', async (t) => {
  const g = await groupOf(3, { timeoutMs: 20_000 });
  t.teardown(() => g.forEach((x) => x.close()));
  const t0 = Date.now();
  const pending = [g[0]!, g[1]!].map((x) => x.allReduceMean(new Float32Array(4)));
  g[2]!.close();  // rank 2 goes away before its part
  const res = await Promise.allSettled(pending);
  for (const r of res) {
    t.equal(r.status, 'rejected');
    if (r.status === 'rejected') t.equal((r.reason as { code: string }).code, 'ERR_DISTRIBUTED', String(r.reason));
  }
  t.ok(Date.now() - t0 < 5000, `failed in ${Date.now() - t0} ms, well before the 20 s timeout`);
  await t.rejects(g[1]!.barrier(), { code: 'ERR_DISTRIBUTED' }, 'and every later call');
});

t.test('a rank that falls silent times out on the others, with the rank named', async (t) => {
  const g = await groupOf(2, { timeoutMs: 500 });
  t.teardown(() => g.forEach((x) => x.close()));
  await t.rejects(g[0]!.allReduceMean(new Float32Array(2)), { code: 'ERR_DISTRIBUTED', message: /timed out after 500 ms waiting for rank 1 in allReduceMean #1/ });
  await t.rejects(g[1]!.barrier(), { code: 'ERR_DISTRIBUTED' }, 'rank 0 closed the group, so rank 1 fails too');
});

t.test('a barrier given its own timeout outlasts the group\'s (rank 0 evaluating while the others wait)', async (t) => {
  const g = await groupOf(2, { timeoutMs: 300 });
  t.teardown(() => g.forEach((x) => x.close()));
  const t0 = Date.now();
  await Promise.all([(async () => { await new Promise((r) => setTimeout(r, 900)); await g[0]!.barrier(5000); })(), g[1]!.barrier(5000)]);
  t.ok(Date.now() - t0 >= 850, 'rank 1 waited for rank 0, three times the group timeout');
  await t.rejects(g[1]!.barrier(200), { code: 'ERR_DISTRIBUTED', message: /timed out after 200 ms/ }, 'a short one still times out');
});

t.test('nobody listening: the joining rank gives up after its timeout', async (t) => {
  const port = await freePort();
  await t.rejects(ProcessGroup.connect({ rank: 1, worldSize: 2, localRank: 1, masterAddr: '127.0.0.1', masterPort: port }, { timeoutMs: 600 }),
    { code: 'ERR_DISTRIBUTED', message: /rank 1 could not reach rank 0 at 127\.0\.0\.1:\d+ within 600 ms/ });
});
