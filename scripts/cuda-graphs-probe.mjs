// Whether ggml's CUDA graphs give the right decode, step by step: decodes a prompt one token per call and prints
// each call's NMSE against the full forward's logits at that position; by default on the demo shape (head size
// 64, F32 weights), or on any model file (e.g. `sqlr1 make-model --shape qwen2.5-1.5b`, head size 128). ggml
// runs a graph's first call directly and captures the second. The addon runs the graphs with ggml's programmatic
// dependent launch off (native/src/model.cpp, backend_set_init); ggml's own switches, read once, set the rest:
//
//   node scripts/cuda-graphs-probe.mjs [--device cuda|cpu] [--model F.gguf]    (the addon's setting)
//   GGML_CUDA_PDL=1 node scripts/cuda-graphs-probe.mjs                         (PDL on: wrong from the 2nd call)
//   GGML_CUDA_DISABLE_GRAPHS=1 node scripts/cuda-graphs-probe.mjs              (no graphs)
//   GGML_CUDA_DISABLE_FUSION=1 node scripts/cuda-graphs-probe.mjs              (ggml's operator fusion off)
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadModel, makeModel } from '../dist/index.js';

const { values: args } = parseArgs({ options: { device: { type: 'string', default: 'cuda' }, model: { type: 'string' } } });
const device = args.device;
const prompt = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 4340, 1657, 8256, 30];

const path = args.model ?? join(tmpdir(), 'sqlr1-graphs-probe-demo-f32.gguf');
if (!args.model && !existsSync(path)) await makeModel({ shape: 'demo', type: 'f32', out: path, seed: 7 });
const model = await loadModel(path, { device });
const V = model.info.nVocab;
const headDim = model.info.headDim;

/** Logits of every position, evaluating `nt` tokens a call in one fresh context. */
async function logitsRows(nt) {
  const ctx = model.createContext({ nSeq: 1, nCtx: 256 });
  try {
    const rows = [];
    for (let i = 0; i < prompt.length; i += nt) {
      const part = prompt.slice(i, i + nt);
      rows.push((await ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.from(part), nt: part.length, allLogits: true })).logits);
    }
    return rows;
  } finally {
    await ctx.dispose();
  }
}

const [full] = await logitsRows(prompt.length);
const steps = await logitsRows(1);
model.dispose();
const errs = steps.map((row, i) => {
  const ref = full.subarray(i * V, (i + 1) * V);
  let num = 0, den = 0;
  for (let j = 0; j < V; j++) { num += (row[j] - ref[j]) ** 2; den += ref[j] ** 2; }
  return num / den;
});
const switches = ['GGML_CUDA_PDL', 'GGML_CUDA_DISABLE_GRAPHS', 'GGML_CUDA_DISABLE_FUSION']
  .filter((k) => process.env[k] !== undefined).map((k) => `, ${k}=${process.env[k]}`).join('');
console.log(`one-token decode vs full forward, NMSE per call (device ${device}, head size ${headDim}${switches}):`);
console.log(errs.map((e) => e.toExponential(1)).join(' '));
