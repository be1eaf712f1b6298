/**
 * Bad requests fail with codes and never abort the process: every check runs before ggml, whose asserts would
 * kill it. Requests go both through the TypeScript API and straight to the addon (which must hold up on its own).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { ParamStore, Tensor, backward, evaluate } from '../../lib/train/index.js';
import type { NativeGraphNode, NativeGraphRequest } from '../../lib/native/types.js';
import { binding } from '../helpers/native.js';
import { isSqlr1Error } from '../../lib/errors.js';

const native = binding('cpu');
const c = (n: number, shape: number[] = [n]): NativeGraphNode => ({ op: 'const', shape, data: new Float32Array(n) });

function graphError(req: NativeGraphRequest): { code?: string; message?: string } {
  try {
    void native.runGraph(req).catch(() => undefined);
    return {};
  } catch (e) {
    return e as { code?: string; message?: string };
  }
}

t.test('the addon rejects malformed graphs with ERR_INVALID_ARG', async (t) => {
  const store = new native.ParamStore({ device: 'cpu', threads: 1 });
  t.teardown(() => store.dispose());
  store.add('w', [3], new Float32Array(3));
  const bad: Array<[string, NativeGraphRequest, RegExp]> = [
    ['bad op', { nodes: [c(3), { op: 'conv2d', inputs: [0] }] }, /unknown op/],
    ['shape mismatch', { nodes: [c(3), c(4), { op: 'add', inputs: [0, 1] }] }, /do not broadcast/],
    ['mask shape mismatch', { nodes: [c(6, [2, 3]), c(2), { op: 'masked_mean', inputs: [0, 1] }] }, /must broadcast/],
    ['unknown param', { store, nodes: [{ op: 'param', param: 'nope' }] }, /unknown parameter 'nope'/],
    ['param without a store', { nodes: [{ op: 'param', param: 'w' }] }, /needs a ParamStore/],
    ['cycle', { nodes: [c(3), { op: 'add', inputs: [0, 2] }, { op: 'neg', inputs: [1] }] }, /cycle/],
    ['self input', { nodes: [{ op: 'neg', inputs: [0] }] }, /itself/],
    ['input out of range', { nodes: [c(3), { op: 'neg', inputs: [5] }] }, /out of range/],
    ['negative input', { nodes: [c(3), { op: 'neg', inputs: [-1] }] }, /out of range/],
    ['wrong arity', { nodes: [c(3), { op: 'add', inputs: [0] }] }, /expects 2 input/],
    ['missing params', { nodes: [c(3), { op: 'clamp', inputs: [0], params: [1] }] }, /expects 2 parameter/],
    ['clamp min > max', { nodes: [c(3), { op: 'clamp', inputs: [0], params: [2, 1] }] }, /min <= max/],
    ['non-finite param', { nodes: [c(3), { op: 'scale', inputs: [0], params: [Infinity] }] }, /finite/],
    ['data length', { nodes: [{ op: 'const', shape: [2, 3], data: new Float32Array(5) }] }, /has 6 elements but data has 5/],
    ['bad shape', { nodes: [{ op: 'const', shape: [0], data: new Float32Array(0) }] }, /integers >= 1/],
    ['too many dims', { nodes: [{ op: 'const', shape: [1, 1, 1, 1, 1], data: new Float32Array(1) }] }, /at most 4/],
    ['reshape count', { nodes: [c(6), { op: 'reshape', inputs: [0], shape: [4] }] }, /element counts differ/],
    ['loss not scalar', { loss: 0, nodes: [c(3)] }, /must be a scalar/],
    ['loss out of range', { loss: 9, nodes: [c(1)] }, /out of range/],
    ['requiresGrad on an op', { nodes: [c(3), { op: 'neg', inputs: [0], requiresGrad: true }] }, /only const/],
    ['empty graph', { nodes: [] }, /no nodes/],
    ['data not Float32Array', { nodes: [{ op: 'const', shape: [2], data: [1, 2] as unknown as Float32Array }] }, /Float32Array/],
  ];
  for (const [name, req, msg] of bad) {
    const e = graphError(req);
    t.equal(e.code, 'ERR_INVALID_ARG', `${name}: ERR_INVALID_ARG`);
    t.match(e.message ?? '', msg, `${name}: ${e.message}`);
  }
  // The addon is still alive and the store not left busy.
  const r = await native.runGraph({ store, loss: 1, nodes: [{ op: 'param', param: 'w' }, { op: 'sum', inputs: [0] }] });
  t.equal(r.loss, 0, 'a valid graph still runs after all of that');
  t.same(r.paramsWithGrad, ['w']);
});

t.test('the TypeScript API reports shape and usage errors where the op is written', async (t) => {
  const a = Tensor.constant(new Float32Array(6), [2, 3]);
  const b = Tensor.constant(new Float32Array(4), [4]);
  t.throws(() => a.add(b), { code: 'ERR_INVALID_ARG', message: /add: shapes \[2, 3\] and \[4\] do not broadcast/ });
  t.throws(() => a.maskedMean(b), { code: 'ERR_INVALID_ARG' });
  t.throws(() => Tensor.constant([1, 2, 3], [2]), { code: 'ERR_INVALID_ARG', message: /has 2 elements but data has 3/ });
  t.throws(() => Tensor.constant([1], [1.5]), { code: 'ERR_INVALID_ARG' });
  t.throws(() => a.clamp(1, 0), { code: 'ERR_INVALID_ARG' });
  t.throws(() => a.scale(NaN), { code: 'ERR_INVALID_ARG' });
  t.throws(() => a.div(0), { code: 'ERR_INVALID_ARG' });
  t.throws(() => a.reshape([5]), { code: 'ERR_INVALID_ARG' });
  await t.rejects(backward(a), { code: 'ERR_INVALID_ARG', message: /must be a scalar/ });
  await t.rejects(evaluate([]), { code: 'ERR_INVALID_ARG' });

  const s1 = new ParamStore({ device: 'cpu', threads: 1 });
  const s2 = new ParamStore({ device: 'cpu', threads: 1 });
  t.teardown(() => { s1.dispose(); s2.dispose(); });
  const p = s1.add('p', [3]);
  const q = s2.add('q', [3]);
  t.throws(() => s1.param('nope'), { code: 'ERR_INVALID_ARG', message: /unknown parameter 'nope'/ });
  t.throws(() => s1.add('p', [3]), { code: 'ERR_INVALID_ARG', message: /already exists/ });
  t.throws(() => s1.set('p', [1, 2]), { code: 'ERR_INVALID_ARG' });
  t.throws(() => s1.get('nope'), { code: 'ERR_INVALID_ARG' });
  await t.rejects(backward(p.add(q).sum()), { code: 'ERR_INVALID_ARG', message: /another ParamStore/ });
  t.throws(() => s1.clipGradNorm(0), { code: 'ERR_INVALID_ARG' });
  s2.dispose();
  t.throws(() => s2.get('q'), { code: 'ERR_DISPOSED' });
  s2.dispose();  // idempotent
});

t.test('calls on a store run in submission order, and dispose waits for none', async (t) => {
  const s = new native.ParamStore({ device: 'cpu', threads: 1 });
  s.add('w', [4], Float32Array.of(1, 2, 3, 4));
  const running = native.runGraph({ store: s, loss: 1, nodes: [{ op: 'param', param: 'w' }, { op: 'sum', inputs: [0] }] });
  s.set('w', new Float32Array(4));  // after the queued run, which sums the old values
  s.dispose();                      // the queued run keeps the store alive until it has run
  t.equal((await running).loss, 10, 'the run queued before set and dispose saw the values before set');
  t.throws(() => s.names(), { code: 'ERR_DISPOSED' });
});

t.test("device 'cuda' on the CPU build fails with ERR_NO_CUDA", async (t) => {
  t.throws(() => new native.ParamStore({ device: 'cuda' }), { code: 'ERR_NO_CUDA' });
  await t.rejects(native.runGraph({ device: 'cuda', nodes: [c(1)] }), { code: 'ERR_NO_CUDA' });
  t.throws(() => new native.ParamStore({ device: 'tpu' as 'cpu' }), { code: 'ERR_INVALID_ARG' });
  let err: unknown;
  try { new ParamStore({ device: 'tpu' as 'cpu' }); } catch (e) { err = e; }
  t.ok(isSqlr1Error(err, 'ERR_INVALID_ARG'), 'the TS wrapper rejects unknown devices too');
});

t.test('malformed requests in a child process: it exits normally', async (t) => {
  // The same bad inputs in a fresh process, which must reach its last line (no ggml abort, exit code 0).
  const script = `
    const b = require('node-gyp-build')(${JSON.stringify(process.cwd() + '/bindings/cpu')});
    const reqs = [
      { nodes: [{ op: 'const', shape: [3], data: new Float32Array(3) }, { op: 'add', inputs: [0, 0, 0] }] },
      { nodes: [{ op: 'const', shape: [3], data: new Float32Array(3) }, { op: 'sub', inputs: [0, 3] }] },
      { loss: 0, nodes: [{ op: 'const', shape: [2], data: new Float32Array(2) }, { op: 'sum_rows', inputs: [0] }, { op: 'exp', inputs: [1] }] },
      { nodes: [{ op: 'mul', inputs: [1, 2] }, { op: 'neg', inputs: [2] }, { op: 'neg', inputs: [0] }] },
      { nodes: 'x' }, null, { nodes: [null] }, { nodes: [{ op: 'const', shape: 'x' }] },
    ];
    let n = 0;
    for (const r of reqs) { try { b.runGraph(r); } catch (e) { if (e.code) n++; } }
    const s = new b.ParamStore({ device: 'cpu' });
    for (const f of [() => s.add('', [1], new Float32Array(1)), () => s.add('a', [2], new Float32Array(3)),
                     () => s.adamwStep({ lr: -1, step: 1 }), () => s.grad(5), () => s.setMoment('a', 'q', new Float32Array(1))]) {
      try { f(); } catch (e) { if (e.code) n++; }
    }
    process.stdout.write('done ' + n);
  `;
  const r = spawnSync(process.execPath, ['-e', script], { cwd: process.cwd(), encoding: 'utf8', timeout: 60_000 });
  t.equal(r.status, 0, `exit code 0 (stderr: ${r.stderr.trim().slice(-300)})`);
  t.equal(r.stdout, 'done 13', 'every bad call threw an error with a code');
});
