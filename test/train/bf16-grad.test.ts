/**
 * The BF16 training path's gradients against finite differences of the exact loss. The analytic gradients come
 * from a trainer with compute 'bf16' (on CUDA: the project's fused kernels; on the CPU: ggml's graph with BF16
 * products); the reference is Richardson-extrapolated central differences (test/train/fixtures/model-fd.ts) of
 * the same loss computed by the F32 path on the CPU, with the same adapter values: an independent float32
 * computation, since finite differences taken in BF16 itself would be swamped by its rounding.
 *
 * The bound: |R - g| <= rel |R| + abs + scaleRel max|g|. BF16 keeps 8 mantissa bits (relative rounding 2^-9 ~
 * 2e-3 per value). A gradient entry is a sum over tokens of products of rounded activations, rounded weights and
 * rounded upstream gradients, through two layers forward and backward: the errors of its terms add up to a few
 * per cent of the entry where the terms agree in sign, and to a few per cent of the tensor's scale where they
 * cancel (small entries). With rel 5e-2 and scaleRel 2e-2, plus the F32 finite differences' own abs 3e-3, the
 * worst |error| / bound measured 0.228 on the CPU and 0.190 on CUDA (H100, 2026-12-07; 84 entries): the bound
 * below halves rel and scaleRel, which leaves the worst measured entry at most at 0.46 of it, a margin of 2 for
 * other seeds and GPUs. A wrong kernel is off by O(1) relative on the largest entry of a tensor (which every
 * check includes). The test prints the worst |error| / bound and the worst relative error of large entries.
 */
import t from 'tap';
import { createLora, loadModel } from '../../lib/model/index.js';
import { LoraTrainer, loraParams } from '../../lib/train/index.js';
import { tempDir, testDevices, tinyModel } from '../helpers/native.js';
import { adapterWithB, dot, fdCheck, SEQUENCES, STARTS, TEMP, weights, type FdBound } from './fixtures/model-fd.js';

const BF16_FD_BOUND: FdBound = { rel: 2.5e-2, abs: 3e-3, scaleRel: 1e-2 };

for (const device of testDevices()) {
  // q4_0: the production base type (on CUDA its blocks are dequantized straight into BF16).
  t.test(`BF16 gradients (${device}) vs finite differences of the F32 loss (cpu), q4_0 base`, async (t) => {
    const path = await tinyModel(tempDir(t), 'q4_0');

    // The analytic gradients of sum(w logp) from the BF16 path.
    const model = await loadModel(path, { device });
    t.teardown(() => model.dispose());
    const lora = adapterWithB(model, 1);
    t.teardown(() => lora.dispose());
    const tr = await LoraTrainer.create(model, lora, { compute: 'bf16' });
    t.teardown(() => tr.dispose());
    const batch = tr.pack({ sequences: SEQUENCES, completionStart: STARTS });
    const w = weights(batch);
    await tr.logprobs(batch, { keep: true, temperature: TEMP });
    tr.params.zeroGrad();
    await tr.backward(w);
    const grads = new Map(lora.tensorNames().map((n) => [n, tr.params.grad(n)]));

    // The reference loss: the F32 path on the CPU, with the same adapter values.
    const ref = await loadModel(path, { device: 'cpu' });
    t.teardown(() => ref.dispose());
    const refLora = createLora(ref, { rank: 4, alpha: 8 });
    t.teardown(() => refLora.dispose());
    for (const n of lora.tensorNames()) refLora.setTensor(n, lora.getTensor(n));
    const refTr = await LoraTrainer.create(ref, refLora, { compute: 'f32' });
    t.teardown(() => refTr.dispose());
    const refBatch = refTr.pack({ sequences: SEQUENCES, completionStart: STARTS });

    const report = await fdCheck(t, loraParams(refLora), (n) => grads.get(n), async () => dot(await refTr.logprobs(refBatch, { temperature: TEMP }), w),
      `bf16 on ${device}`, BF16_FD_BOUND);
    t.comment(`BF16 FD check on ${device}: worst |error| / bound ${report.worst.toFixed(3)}, worst relative error ${report.worstRelative.toExponential(2)}, ${report.checked} entries`);
  });
}
