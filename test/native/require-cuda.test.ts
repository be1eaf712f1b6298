/**
 * SQLR1_REQUIRE_CUDA=1 (set by the GPU check) turns a CUDA test that would skip into a failure that names the
 * reason; so does SQLR1_TEST_DEVICES=cuda (the GPU check's "CUDA cases only"). Each case runs the test helper in a child process with CUDA switched off (SQLR1_NO_CUDA=1).
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const helper = fileURLToPath(new URL('../helpers/native.ts', import.meta.url));
// The child loads TypeScript the way this test process does (tap's loader flags).
const loader = process.execArgv.filter((a) => a.includes('typescript'));

function runHelper(call: 'testDevices' | 'cudaSkipReason', env: Record<string, string>) {
  const script = `import(${JSON.stringify(helper)}).then((h) => process.stdout.write(JSON.stringify(h.${call}())))`;
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
  for (const k of ['SQLR1_REQUIRE_CUDA', 'SQLR1_TEST_DEVICES']) if (!(k in env)) delete childEnv[k];
  return spawnSync(process.execPath, [...loader, '--input-type=module', '-e', script], { encoding: 'utf8', env: childEnv, timeout: 120_000 });
}

t.test('without SQLR1_REQUIRE_CUDA a missing CUDA device is a skip', async (t) => {
  const devices = runHelper('testDevices', { SQLR1_NO_CUDA: '1' });
  t.equal(devices.status, 0, devices.stderr);
  t.same(JSON.parse(devices.stdout), ['cpu']);
  const skip = runHelper('cudaSkipReason', { SQLR1_NO_CUDA: '1' });
  t.equal(skip.status, 0, skip.stderr);
  t.match(JSON.parse(skip.stdout), /SQLR1_NO_CUDA=1/);
});

t.test('with SQLR1_REQUIRE_CUDA=1 a missing CUDA device fails and says why', async (t) => {
  for (const call of ['testDevices', 'cudaSkipReason'] as const) {
    const r = runHelper(call, { SQLR1_NO_CUDA: '1', SQLR1_REQUIRE_CUDA: '1' });
    t.not(r.status, 0, `${call} fails`);
    t.equal(r.stdout, '', `${call} returns nothing`);
    t.match(r.stderr, /SQLR1_REQUIRE_CUDA=1 but CUDA is not usable: [^]*SQLR1_NO_CUDA=1/, `${call} prints the probe's reason`);
  }
});

t.test('SQLR1_TEST_DEVICES=cuda keeps only CUDA, and fails where CUDA is missing', async (t) => {
  const r = runHelper('testDevices', { SQLR1_NO_CUDA: '1', SQLR1_TEST_DEVICES: 'cuda' });
  t.not(r.status, 0, 'fails instead of running no case');
  t.match(r.stderr, /SQLR1_TEST_DEVICES=cuda but CUDA is not usable: [^]*SQLR1_NO_CUDA=1/);
  const bad = runHelper('testDevices', { SQLR1_TEST_DEVICES: 'gpu' });
  t.not(bad.status, 0, 'an unknown value fails');
  t.match(bad.stderr, /SQLR1_TEST_DEVICES must be 'cuda' or unset/);
  const cuda = runHelper('testDevices', { SQLR1_TEST_DEVICES: 'cuda' });
  if (cuda.status === 0) t.same(JSON.parse(cuda.stdout), ['cuda'], 'where CUDA is usable: the CUDA cases only');
  else t.match(cuda.stderr, /SQLR1_TEST_DEVICES=cuda but CUDA is not usable/, 'without a CUDA device: the same failure');
});
