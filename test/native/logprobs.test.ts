/**
 * Teacher-forced log-probs: against log-softmax of the full logits computed here in float64, and against
 * the log-probs the sampler reported for the same tokens (GRPO's old policy must equal a teacher-forced pass).
 *
 * Tolerances: vs the float64 log-softmax of the same device's logits, 1e-4 absolute (the device's F32 softmax
 * over 151,936 entries). vs the sampler: 2e-3 absolute on the CPU, since decoding one token at a time and a full-sequence
 * pass use different matmul kernels; 2e-2 on CUDA, where many-token F32 products run on tensor cores at TF32
 * precision (10-bit mantissa) and one-token ones in full F32 (measured on an H100: up to 7e-3).
 */
import t from 'tap';
import { createLora, generate, loadModel, teacherForcedLogprobs } from '../../lib/model/index.js';
import { randomArray, tempDir, testDevices, tinyModel } from '../helpers/native.js';

for (const device of testDevices()) {
  t.test(`teacher-forced log-probs on ${device}`, async (t) => {
    const dir = tempDir(t);
    // f32 weights: with quantized weights, CUDA's one-token and many-token kernels quantize activations
    // differently (see model.test.ts), which would blur the comparison with the sampler.
    const model = await loadModel(await tinyModel(dir, 'f32'), { device });
    t.teardown(() => model.dispose());
    const V = model.info.nVocab;
    const prompt = [151644, 872, 198, 4340, 1657, 8256, 30, 151645, 198, 151644, 77091, 198];
    const temperature = 0.7;
    const { completions } = await generate(model, { prompts: [prompt, prompt.slice(0, 5)], samplesPerPrompt: 2, maxNewTokens: 9, temperature, seed: 4, stopAtEog: false });
    const sequences = completions.map((c) => [...(c.promptIndex === 0 ? prompt : prompt.slice(0, 5)), ...c.tokens]);
    const starts = completions.map((c) => (c.promptIndex === 0 ? prompt.length : 5));
    const tf = await teacherForcedLogprobs(model, { sequences, completionStart: starts, temperature });
    completions.forEach((c, i) => {
      t.equal(tf[i]!.length, c.tokens.length);
      const worst = Math.max(...c.logprobs.map((lp, j) => Math.abs(lp - tf[i]![j]!)));
      const tol = device === 'cuda' ? 2e-2 : 2e-3;
      t.ok(worst < tol, `sequence ${i}: teacher-forced == sampled log-probs (max |diff| ${worst.toExponential(2)} < ${tol})`);
    });

    // Against a float64 log-softmax of the full logits of one sequence.
    const seq = sequences[0]!;
    const ctx = model.createContext({ nSeq: 1, nCtx: 64 });
    const full = await ctx.eval({ streams: Int32Array.of(0), tokens: Int32Array.from(seq), nt: seq.length, allLogits: true });
    await ctx.dispose();
    let worst = 0;
    for (let p = starts[0]! - 1; p < seq.length - 1; p++) {
      const row = full.logits!.subarray(p * V, (p + 1) * V);
      let mx = -Infinity;
      for (const v of row) mx = Math.max(mx, v / temperature);
      let sum = 0;
      for (const v of row) sum += Math.exp(v / temperature - mx);
      const ref = row[seq[p + 1]!]! / temperature - mx - Math.log(sum);
      worst = Math.max(worst, Math.abs(ref - tf[0]![p - starts[0]! + 1]!));
    }
    t.ok(worst < 1e-4, `== float64 log-softmax of the logits (max |diff| ${worst.toExponential(2)})`);

    // With an adapter: on changes the log-probs, off gives the reference policy exactly.
    const lora = createLora(model, { rank: 4, seed: 1 });
    for (const name of lora.tensorNames()) if (name.endsWith('lora_b')) lora.setTensor(name, randomArray(lora.getTensor(name).length, 9, 0.05));
    const policy = await teacherForcedLogprobs(model, { sequences, completionStart: starts, temperature, lora });
    lora.setEnabled(false);
    const reference = await teacherForcedLogprobs(model, { sequences, completionStart: starts, temperature, lora });
    t.same(Array.from(reference[1]!), Array.from(tf[1]!), 'adapter off == no adapter, exactly');
    t.ok(policy.some((p, i) => p.some((v, j) => Math.abs(v - tf[i]![j]!) > 1e-3)), 'adapter on changes the log-probs');

    await t.rejects(teacherForcedLogprobs(model, { sequences, completionStart: [0, 1, 1, 1] }), { code: 'ERR_INVALID_ARG' });
    await t.rejects(teacherForcedLogprobs(model, { sequences: [[1, 2, V]], completionStart: [1] }), { code: 'ERR_TOKEN_RANGE' });
  });
}
