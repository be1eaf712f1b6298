// Prints sqlr1's batched generation next to llama-batched-bench's figures from the same run, with ratios.
// Usage: node scripts/bench-compare.mjs sqlr1-bench.json llama-batched-bench.jsonl [ourPeakMiB] [llamaPeakMiB]
import { readFileSync } from 'node:fs';

const [oursFile, llamaFile, memOurs, memLlama] = process.argv.slice(2);
const ours = JSON.parse(readFileSync(oursFile, 'utf8'));
const llama = readFileSync(llamaFile, 'utf8').split('\n').filter((l) => l.trim().startsWith('{')).map((l) => JSON.parse(l));
const out = [];
out.push(`GPU: ${ours.gpu}; model: ${ours.model} (${ours.weightType})`);
out.push('| B | prompt | new | sqlr1 total s | llama.cpp total s | ratio (<= 1 is as fast or faster) | sqlr1 decode tok/s | llama.cpp decode tok/s |');
out.push('|---|---|---|---|---|---|---|---|');
for (const r of ours.rows) {
  const l = llama.find((x) => x.pl === r.batch && x.pp === r.promptTokens && x.tg === r.newTokens);
  const lt = l ? l.t : NaN;
  out.push(`| ${r.batch} | ${r.promptTokens} | ${r.newTokens} | ${r.totalS.toFixed(3)} | ${l ? lt.toFixed(3) : '-'} | ` +
    `${l ? (r.totalS / lt).toFixed(3) : '-'} | ${r.decodeTokPerS.toFixed(1)} | ${l ? l.speed_tg.toFixed(1) : '-'} |`);
}
if (memOurs) out.push(`peak GPU memory (nvidia-smi, sampled every 0.2 s): sqlr1 ${memOurs} MiB, llama-batched-bench ${memLlama} MiB`);
const inproc = ours.rows.filter((r) => r.gpuUsedMiB !== undefined).map((r) => `B=${r.batch}: ${r.gpuUsedMiB.toFixed(0)} MiB`);
if (inproc.length) out.push(`sqlr1 device memory in use after each run (context alive): ${inproc.join(', ')}`);
console.log(out.join('\n'));
