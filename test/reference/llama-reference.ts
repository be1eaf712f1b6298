/**
 * Runs test/reference's llama-reference program (llama.cpp's own forward, built by scripts/build-reference.mjs)
 * and reads its results back; builds it first when the binary is missing.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export type ReferenceVariant = 'cpu' | 'cuda';

export function referenceBinary(variant: ReferenceVariant): string {
  return join(root, 'test', 'reference', variant === 'cuda' ? 'build-cuda' : 'build', 'llama-reference');
}

/**
 * The binary's path, built when missing (scripts/build-reference.mjs, with --cuda for the CUDA variant; the
 * build's output goes to stderr). A failed build rejects: where llama.cpp can be built, the comparison never
 * silently skips.
 */
export async function ensureReference(variant: ReferenceVariant): Promise<string> {
  const bin = referenceBinary(variant);
  if (existsSync(bin)) return bin;
  const script = `scripts/build-reference.mjs${variant === 'cuda' ? ' --cuda' : ''}`;
  process.stderr.write(`[llama-reference] ${bin} is missing: building it (node ${script})\n`);
  const args = [join(root, 'scripts', 'build-reference.mjs'), ...(variant === 'cuda' ? ['--cuda'] : [])];
  const code = await new Promise<number | null>((resolve) => {
    const child = spawn(process.execPath, args, { cwd: root, stdio: ['ignore', 2, 2] });
    child.on('error', () => resolve(null));
    child.on('exit', (c) => resolve(c));
  });
  if (code !== 0 || !existsSync(bin)) {
    throw new Error(`could not build llama-reference (${variant}; exit ${String(code)}): run \`node ${script}\` and see its output`);
  }
  return bin;
}

export interface ReferenceEval {
  nVocab: number;
  nTokens: number;
  /** Logits at every prompt position, [nTokens][nVocab]. */
  logits: Float32Array;
  /** Greedy continuation, decoded one token at a time through llama.cpp's KV cache. */
  greedy: number[];
  /** Top-1 minus top-2 logit at each greedy step (small: a near-tie that rounding may flip). */
  margin: number[];
  /** Log-softmax of each greedy token (computed in double precision). */
  logprob: number[];
}

export function referenceEval(bin: string, options: {
  model: string; tokens: readonly number[]; out: string; lora?: string; nGen: number; device: ReferenceVariant; threads?: number;
}): ReferenceEval {
  const args = ['eval', '--model', options.model, '--tokens', options.tokens.join(','), '--out', options.out,
    '--n-gen', String(options.nGen), '--device', options.device, '--threads', String(options.threads ?? 2)];
  if (options.lora) args.push('--lora', options.lora);
  const stdout = execFileSync(bin, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const j = JSON.parse(stdout) as { n_vocab: number; n_tokens: number; greedy: number[]; margin: number[]; logprob: number[] };
  const buf = readFileSync(options.out);
  const logits = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  if (logits.length !== j.n_vocab * j.n_tokens) throw new Error(`llama-reference wrote ${logits.length} logits, expected ${j.n_tokens} x ${j.n_vocab}`);
  return { nVocab: j.n_vocab, nTokens: j.n_tokens, logits, greedy: j.greedy, margin: j.margin, logprob: j.logprob };
}

/** A random qwen2 model of a custom shape with `base`'s metadata and tokenizer (see llama_reference.cpp). */
export function referenceSynth(bin: string, options: {
  base: string; out: string; type: string; embd: number; ff: number; heads: number; kvHeads: number; layers: number; seed: number; untied: boolean;
}): void {
  const args = ['synth', '--from', options.base, '--out', options.out, '--type', options.type, '--embd', String(options.embd),
    '--ff', String(options.ff), '--heads', String(options.heads), '--kv-heads', String(options.kvHeads),
    '--layers', String(options.layers), '--seed', String(options.seed), ...(options.untied ? ['--untied'] : [])];
  execFileSync(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
}
