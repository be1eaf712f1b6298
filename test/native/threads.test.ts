import t from 'tap';
import { defaultThreads } from '../../lib/native/threads.js';

t.test('SQLR1_THREADS sets the default CPU thread count; unset means all cores (0)', async (t) => {
  const saved = process.env.SQLR1_THREADS;
  t.teardown(() => { if (saved === undefined) delete process.env.SQLR1_THREADS; else process.env.SQLR1_THREADS = saved; });
  delete process.env.SQLR1_THREADS;
  t.equal(defaultThreads(), 0);
  process.env.SQLR1_THREADS = '3';
  t.equal(defaultThreads(), 3);
  for (const bad of ['0', '-1', '2.5', 'all', '5000']) {
    process.env.SQLR1_THREADS = bad;
    t.throws(() => defaultThreads(), { code: 'ERR_CONFIG', message: /SQLR1_THREADS must be an integer in \[1, 1024\]/ }, bad);
  }
});
