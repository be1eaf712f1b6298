// Why ggml's CUDA graphs are off in the addon, step by step: decodes a prompt one token per call on the demo
// shape (head size 64, F32 weights) and prints each call's NMSE against the full forward's logits at that
// position, with ggml's CUDA graphs off (the addon's default) and on (SQLR1_CUDA_GRAPHS=1, in a child process:
// ggml reads its switch once per process). ggml runs a graph's first call directly and captures the second.
//
//   node scripts/cuda-graphs-probe.mjs [--device cuda|cpu]
//   GGML_CUDA_DISABLE_FUSION=1 node scripts/cuda-graphs-probe.mjs     (the same with ggml's operator fusion off)
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel, makeModel } from '../dist/index.js';

const argv = process.argv.slice(2);
const device = argv.includes('--device') ? argv[argv.indexOf('--device') + 1] : 'cuda';
const prompt = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 4340, 1657, 8256, 30];

async function probe() {
  const path = join(tmpdir(), 'sqlr1-graphs-probe-demo-f32.gguf');
  if (!existsSync(path)) await makeModel({ shape: 'demo', type: 'f32', out: path, seed: 7 });
  const model = await loadModel(path, { device });
  const V = model.info.nVocab;
  const run = async (tokens, nt) => {
    const ctx = model.createContext({ nSeq: 1, nCtx: 256 });
    try {
      const rows = [];
      for (let i = 0; i < tokens.length; i += nt) {
        const part = tokens.slice(i, i + nt);
        rows.push((await ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.from(part), nt: part.length, allLogits: true })).logits);
      }
      return rows;
    } finally {
      await ctx.dispose();
    }
  };
  const [full] = await run(prompt, prompt.length);
  const steps = await run(prompt, 1);
  model.dispose();
  return steps.map((row, i) => {
    const ref = full.subarray(i * V, (i + 1) * V);
    let num = 0, den = 0;
    for (let j = 0; j < V; j++) { num += (row[j] - ref[j]) ** 2; den += ref[j] ** 2; }
    return num / den;
  });
}

if (process.env.SQLR1_GRAPHS_PROBE_CHILD) {
  process.stdout.write(JSON.stringify(await probe()));
} else {
  console.log(`one-token decode vs full forward, NMSE per call (device ${device}${process.env.GGML_CUDA_DISABLE_FUSION ? ', fusion off' : ''}):`);
  for (const [label, env] of [['graphs off', {}], ['graphs on ', { SQLR1_CUDA_GRAPHS: '1' }]]) {
    const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), ...argv], {
      env: { ...process.env, ...env, SQLR1_GRAPHS_PROBE_CHILD: '1' }, encoding: 'utf8',
    });
    if (r.status !== 0) { console.log(`${label}: failed\n${r.stderr}`); process.exitCode = 1; continue; }
    console.log(`${label}: ${JSON.parse(r.stdout).map((e) => e.toExponential(1)).join(' ')}`);
  }
}
