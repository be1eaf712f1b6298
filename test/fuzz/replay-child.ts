/**
 * Child process of the fuzz replay tests: feeds files to one GGUF reader and prints one line per file, so that an
 * abort (which kills this process, never the test runner) is pinned to the input that caused it.
 *
 *   node --import=<ts loader> test/fuzz/replay-child.ts <target> <list file> [model path]
 *
 * Targets: `model` (the addon's loader straight, then `loadModel`, whose TypeScript reader sees the file first),
 * `adapter` (`loadLora` against the model at [model path]), `state` (`ParamStore.loadState` into the store of
 * STATE_PARAMS), `reader` (`readGgufMetadata`). Output, one line each:
 *   START <i>               before input i is opened
 *   DONE <i> <outcome>...   per call: `ok` or the Sqlr1Error code; anything else thrown prints `UNTYPED <name>: <message>`
 *                           (`model` gives two outcomes: the addon's, then loadModel's)
 */
import { readFileSync } from 'node:fs';
import { isSqlr1Error } from '../../lib/errors.js';
import { readGgufMetadata } from '../../lib/gguf/reader.js';
import { loadLora, loadModel, type Model } from '../../lib/model/index.js';
import { callNative } from '../../lib/native/binding.js';
import { binding } from '../helpers/native.js';
import { ParamStore } from '../../lib/train/params.js';
import { STATE_PARAMS } from './targets.js';

const [target, listFile, modelPath] = process.argv.slice(2);
const files = readFileSync(listFile!, 'utf8').split('\n').filter((l) => l.length > 0);
// Pipes are written synchronously on Linux, so each line is out before the next input can abort the process.
const say = (line: string) => process.stdout.write(line + '\n');

function outcome(e: unknown): string {
  if (isSqlr1Error(e)) return e.code;
  const err = e as { name?: unknown; message?: unknown };
  return `UNTYPED ${String(err?.name)}: ${String(err?.message ?? e).replace(/\n/g, ' ').slice(0, 300)}`;
}

async function run(fn: () => Promise<void>): Promise<string> {
  try {
    await fn();
    return 'ok';
  } catch (e) {
    return outcome(e);
  }
}

let model: Model | undefined;
let store: ParamStore | undefined;
if (target === 'adapter') model = await loadModel(modelPath!, { device: 'cpu', threads: 1 });
if (target === 'state') {
  store = new ParamStore({ device: 'cpu', threads: 1 });
  for (const p of STATE_PARAMS) store.add(p.name, p.shape, new Float32Array(p.shape.reduce((a, b) => a * b, 1)));
}

for (let i = 0; i < files.length; i++) {
  const f = files[i]!;
  say(`START ${i}`);
  let result: string;
  switch (target) {
    case 'model': {
      // The native loader's own checks must hold without the TypeScript reader in front of it.
      const native = await run(async () => (await callNative(() => binding('cpu').loadModel(f, { device: 'cpu', threads: 1 }))).dispose());
      const lib = await run(async () => (await loadModel(f, { device: 'cpu', threads: 1 })).dispose());
      result = `${native} ${lib}`;
      break;
    }
    case 'adapter':
      result = await run(async () => (await loadLora(model!, f)).dispose());
      break;
    case 'state':
      result = await run(async () => { await store!.loadState(f); });
      break;
    case 'reader':
      result = await run(async () => { await readGgufMetadata(f); });
      break;
    default:
      throw new Error(`unknown target '${String(target)}'`);
  }
  say(`DONE ${i} ${result}`);
}
model?.dispose();
store?.dispose();
say('END');
