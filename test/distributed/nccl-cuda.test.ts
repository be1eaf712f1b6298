/**
 * The real NCCL with one rank on the CUDA device (the GPU machine: scripts/gpu-check.sh finds the library and sets
 * SQLR1_NCCL_LIBRARY; there a missing library fails this file instead of skipping it). One rank's sum and
 * broadcast give back its own buffer bit for bit, so the staging through device memory is checked end to end;
 * the time of a 100 MB all-reduce (a large adapter's gradients) is printed.
 */
import t from 'tap';
import { connectNccl } from '../../lib/distributed/nccl.js';
import { REQUIRE_CUDA, binding, cudaSkipReason } from '../helpers/native.js';
import { groupOf } from '../helpers/distributed.js';

const skip = cudaSkipReason();
const library = process.env.SQLR1_NCCL_LIBRARY;
const noLibrary = library ? false : 'SQLR1_NCCL_LIBRARY is not set (the GPU check sets it to the NCCL it finds)';
if (!skip && noLibrary && REQUIRE_CUDA) throw new Error(`SQLR1_REQUIRE_CUDA=1: ${noLibrary}`);

t.test('NCCL with one rank on CUDA', { skip: skip || noLibrary }, async (t) => {
  const info = binding('cuda').nccl.load(library);
  t.ok(info.version >= 21800, `NCCL ${info.versionString} from ${info.path}`);
  const [g] = await groupOf(1);
  t.teardown(() => g!.close());
  g!.useTransport(await connectNccl(g!, { library: library! }));
  t.equal(g!.backend, 'nccl');

  const n = 25_000_000;   // 100 MB of float32
  const buf = Float32Array.from({ length: n }, (_, i) => Math.sin(i) * 1e3);
  const want = Float32Array.from(buf);
  const times: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    await g!.allReduceSum(buf);
    times.push(performance.now() - t0);
  }
  t.ok(Buffer.from(buf.buffer).equals(Buffer.from(want.buffer)), 'the sum over one rank is its own buffer, bit for bit');
  t.comment(`all-reduce of 100 MB, one rank, through device memory: ${times.map((x) => x.toFixed(1)).join(', ')} ms`);
  const small = Float32Array.from([1.5, -2, 3]);
  await g!.broadcast(small);
  t.same([...small], [1.5, -2, 3]);
  await g!.allReduceSum(new Float32Array(0));
  t.pass('an empty buffer is a no-op');
  g!.close();
  await t.rejects(g!.allReduceSum(small), { code: 'ERR_DISTRIBUTED' }, 'a closed group refuses');
});
