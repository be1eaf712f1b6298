/**
 * The training graphs' Q4_0 -> BF16 dequantization (native/cuda/dequant.cu) against the format's definition:
 * each 32-element block is an fp16 scale d and 16 bytes of nibbles; element i < 16 is (low nibble of byte i) - 8,
 * element i + 16 the high nibble's, each times d. (q - 8) * d is exact in float32 (an fp16 times a small
 * integer), so the expected BF16 word is that product rounded to nearest even: the kernel must match bit for bit.
 */
import t from 'tap';
import { cudaSkipReason, testHooks, toBf16 } from '../helpers/native.js';

const skip = cudaSkipReason();

/** Float value of an fp16 word. */
function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

function randomBlocks(nBlocks: number, seed: number): Uint8Array {
  let x = seed >>> 0;
  const next = () => (x = (Math.imul(x, 1664525) + 1013904223) >>> 0);
  const out = new Uint8Array(nBlocks * 18);
  for (let b = 0; b < nBlocks; b++) {
    // Finite scales of both signs across the fp16 range, some subnormal: exponent field 0..30.
    const e = next() % 31, m = next() & 0x3ff, sign = next() & 1;
    const h = (sign << 15) | (e << 10) | m;
    out[b * 18] = h & 0xff;
    out[b * 18 + 1] = h >> 8;
    for (let i = 0; i < 16; i++) out[b * 18 + 2 + i] = next() & 0xff;
  }
  return out;
}

function reference(blocks: Uint8Array, n: number): Uint16Array {
  const f = new Float32Array(n);
  for (let b = 0; b < n / 32; b++) {
    const d = halfToFloat(blocks[b * 18]! | (blocks[b * 18 + 1]! << 8));
    for (let i = 0; i < 16; i++) {
      const q = blocks[b * 18 + 2 + i]!;
      f[b * 32 + i] = ((q & 0x0f) - 8) * d;
      f[b * 32 + i + 16] = ((q >> 4) - 8) * d;
    }
  }
  const bits = new Uint32Array(toBf16(f).buffer);
  return Uint16Array.from(bits, (w) => w >>> 16);
}

t.test('Q4_0 -> BF16 dequantization matches the format bit for bit', { skip }, async (t) => {
  for (const [nBlocks, seed] of [[1, 1], [7, 2], [257, 3], [4096 + 5, 4]] as const) {
    const blocks = randomBlocks(nBlocks, seed), n = nBlocks * 32;
    const got = testHooks('cuda').dequantQ4_0Cuda(blocks, n), want = reference(blocks, n);
    let bad = 0;
    for (let i = 0; i < n; i++) if (got[i] !== want[i]) bad++;
    t.equal(bad, 0, `${nBlocks} blocks (seed ${seed}): every BF16 word as the format defines it`);
  }
});

t.test('Q4_0 dequantization rejects bad requests with typed errors', async (t) => {
  const b = testHooks('cpu');
  t.throws(() => b.dequantQ4_0Cuda(new Uint8Array(18), 33), { code: 'ERR_INVALID_ARG' }, 'n not a multiple of 32');
  t.throws(() => b.dequantQ4_0Cuda(new Uint8Array(17), 32), { code: 'ERR_INVALID_ARG' }, 'too few bytes for n');
  if (skip) t.throws(() => b.dequantQ4_0Cuda(new Uint8Array(18), 32), { code: 'ERR_NO_CUDA' }, 'no CUDA in this binary or machine');
});
