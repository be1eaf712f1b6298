/**
 * The run configuration: both shipped YAML files load with the values they document, every key is listed and
 * commented there, and every kind of bad input (unknown key, wrong type, out of range, bad YAML, bad override)
 * is ERR_CONFIG naming the key, the value and the file.
 */
import t, { type Test } from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import {
  CONFIG_KEYS, ConfigError, GRPO_DEFAULTS, configToYaml, loadConfig, parseOverride, resolveConfig, type GrpoConfig,
} from '../../lib/grpo/config.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const SEED = join(root, 'configs/grpo_config.yaml');
const SQLR1 = join(root, 'configs/sql_r1.yaml');
const dir = mkdtempSync(join(tmpdir(), 'sqlr1-config-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const file = (text: string): string => {
  const p = join(dir, `c${n++}.yaml`);
  writeFileSync(p, text);
  return p;
};

/** Asserts ERR_CONFIG whose message names the key, the value and the file (and optional extra words). */
async function rejects(t: Tap, p: Promise<unknown> | (() => unknown), want: { file: string; key: string; value?: string; has?: string[] }, msg: string): Promise<void> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  if (!(err instanceof ConfigError)) {
    t.fail(`${msg}: expected a ConfigError, got ${String(err)}`);
    return;
  }
  t.equal(err.code, 'ERR_CONFIG', `${msg}: code`);
  t.equal(err.key, want.key, `${msg}: key field`);
  t.equal(err.file, want.file, `${msg}: file field`);
  for (const part of [want.file, want.key, ...(want.value !== undefined ? [want.value] : []), ...(want.has ?? [])]) {
    t.ok(err.message.includes(part), `${msg}: the message "${err.message}" names ${JSON.stringify(part)}`);
  }
}
type Tap = Test;

t.test('configs/grpo_config.yaml: the seed hyperparameters', async (t) => {
  const c = await loadConfig(SEED);
  t.equal(c.learningRate, 5e-6);
  t.equal(c.weightDecay, 0.01);
  t.equal(c.numGenerations, 4);
  t.equal(c.epsilon, 0.2);
  t.equal(c.epsilonHigh, null);
  t.equal(c.beta, 0.05);
  t.equal(c.temperature, 0.7);
  t.equal(c.maxCompletionLength, 256);
  t.equal(c.numTrainEpochs, 2);
  t.equal(c.evalSteps, 50);
  t.same(c.lora, { rank: 16, alpha: 32, targets: ['q', 'k', 'v', 'o', 'gate', 'up', 'down'], path: null });
  t.equal(c.rewardPreset, 'default');
  t.equal(c.klEstimator, 'k3');
  t.same(c, GRPO_DEFAULTS, 'the file writes out exactly the defaults');
});

t.test('configs/sql_r1.yaml: SQL-R1 settings', async (t) => {
  const c = await loadConfig(SQLR1);
  t.equal(c.numGenerations, 8);
  t.equal(c.temperature, 1.1);
  t.equal(c.learningRate, 3e-7);
  t.equal(c.beta, 0.001);
  t.equal(c.rewardPreset, 'sql-r1');
  t.equal(c.lrSchedulerType, 'constant');
  t.equal(c.outputDir, 'runs/sql_r1');
});

t.test('both files list every key, each value with a comment', async (t) => {
  for (const path of [SEED, SQLR1]) {
    const text = readFileSync(path, 'utf8');
    const data = parseYaml(text) as Record<string, unknown>;
    const keys = [...Object.keys(data).filter((k) => k !== 'lora'), ...Object.keys(data['lora'] as object).map((k) => `lora.${k}`)].sort();
    t.same(keys, [...CONFIG_KEYS].filter((k) => k !== 'lora').sort(), `${path}: every key is written out`);
    const valueLines = text.split('\n').filter((l) => /^\s*[a-z_]+:\s*\S/.test(l));
    const bare = valueLines.filter((l) => !/\s#\s\S/.test(l));
    t.same(bare, [], `${path}: every value line has a comment`);
  }
});

t.test('resolveConfig: defaults, both spellings, nested lora, overrides', async (t) => {
  t.same(resolveConfig({}), GRPO_DEFAULTS);
  const c = resolveConfig({ learning_rate: 1e-5, numGenerations: 6, lora: { rank: 8, targets: ['q', 'v'] }, epsilon_high: 0.28 });
  t.equal(c.learningRate, 1e-5);
  t.equal(c.numGenerations, 6);
  t.same(c.lora, { rank: 8, alpha: 32, targets: ['q', 'v'], path: null }, 'nested keys fill in defaults');
  t.equal(c.epsilonHigh, 0.28);
  t.equal(resolveConfig({ lora: 'a.gguf' }).lora.path, 'a.gguf', 'lora: <path> continues from an adapter');
  const before = JSON.stringify(GRPO_DEFAULTS);
  c.lora.targets.push('o');
  t.equal(JSON.stringify(GRPO_DEFAULTS), before, 'a resolved config does not share arrays with the defaults');

  const o = await loadConfig(SEED, { overrides: { max_steps: 20, learningRate: 1e-6, 'lora.rank': 4 } });
  t.equal(o.maxSteps, 20);
  t.equal(o.learningRate, 1e-6, 'a camelCase override replaces the snake_case file key');
  t.same(o.lora, { ...GRPO_DEFAULTS.lora, rank: 4 }, 'a dotted override keeps the other nested keys');
  t.same(parseOverride('lora.targets=[q, v]'), ['lora.targets', ['q', 'v']]);
  t.same(parseOverride('beta=0'), ['beta', 0]);
  t.same(parseOverride('epsilon_high=null'), ['epsilon_high', null]);
  t.same(parseOverride('output_dir=runs/a=b'), ['output_dir', 'runs/a=b']);
  t.equal((await loadConfig(file(''))).learningRate, GRPO_DEFAULTS.learningRate, 'an empty file is all defaults');
});

t.test('configToYaml writes every value and reads back to the same config', async (t) => {
  const c = resolveConfig({ loss_type: 'dr_grpo', reward_weights: { format: 0.5 }, lora: { targets: ['q', 'k'], path: 'x.gguf' }, epsilon_high: 0.28, model: 'm.gguf' });
  const text = configToYaml(c);
  for (const key of CONFIG_KEYS.filter((k) => !k.startsWith('lora.'))) t.match(text, new RegExp(`^${key}:`, 'm'), `${key} is written`);
  t.same(await loadConfig(file(text)), c, 'round trip');
  t.same(await loadConfig(file(configToYaml(GRPO_DEFAULTS))), GRPO_DEFAULTS, 'defaults round trip');
});

t.test('unknown keys: ERR_CONFIG with a suggestion', async (t) => {
  const p1 = file('learning_rate: 1.0e-5\nlearnig_rate: 3\n');
  await rejects(t, loadConfig(p1), { file: p1, key: 'learnig_rate', value: '3', has: ["did you mean 'learning_rate'"] }, 'misspelled top-level key');
  const p2 = file('numGeneration: 8\n');
  await rejects(t, loadConfig(p2), { file: p2, key: 'numGeneration', value: '8', has: ["did you mean 'num_generations'"] }, 'camelCase typo');
  const p3 = file('lora:\n  rnak: 8\n');
  await rejects(t, loadConfig(p3), { file: p3, key: 'lora.rnak', value: '8', has: ["did you mean 'lora.rank'"] }, 'nested typo');
  const p4 = file('gradient_accumulation_steps: 4\n');
  await rejects(t, loadConfig(p4), { file: p4, key: 'gradient_accumulation_steps', value: '4', has: ['unknown key', 'micro_batch_tokens'] }, 'a key far from any: the list of keys');
  const p5 = file('reward_weights:\n  formt: 0.5\n');
  await rejects(t, loadConfig(p5), { file: p5, key: 'reward_weights.formt', value: '0.5', has: ["did you mean 'format'"] }, 'a weight for a component that does not exist');
  t.equal(resolveConfig({ reward_weights: { mine: 2 } }, 'x', { rewardComponents: ['mine'] }).rewardWeights['mine'], 2, 'user reward functions may be weighted');
  await rejects(t, () => resolveConfig({ learning_rate: 1, learningRate: 2 }, 'opts'), { file: 'opts', key: 'learningRate', value: '2', has: ['twice'] }, 'the same key in two spellings');
  await rejects(t, () => resolveConfig({ loss_type: 'dr-grpo' }, 'opts'), { file: 'opts', key: 'loss_type', value: '"dr-grpo"', has: ["did you mean 'dr_grpo'"] }, 'a misspelled choice');
  t.equal(resolveConfig({ learningRate: undefined, beta: 0 }).learningRate, GRPO_DEFAULTS.learningRate, 'an undefined option is not given');
  await rejects(t, () => resolveConfig({ Learning_Rate: 1 }, 'opts'), { file: 'opts', key: 'Learning_Rate', has: ["did you mean 'learning_rate'"] }, 'odd casing is not a spelling');
});

t.test('wrong types: ERR_CONFIG naming key, value and file', async (t) => {
  const cases: Array<[string, string, string]> = [
    ['learning_rate: fast\n', 'learning_rate', '"fast"'],
    ['num_generations: "8"\n', 'num_generations', '"8"'],
    ['mask_truncated_completions: 1\n', 'mask_truncated_completions', '1'],
    ['loss_type: ppo\n', 'loss_type', '"ppo"'],
    ['scale_rewards: true\n', 'scale_rewards', 'true'],
    ['kl_estimator: k2\n', 'kl_estimator', '"k2"'],
    ['lr_scheduler_type: cosine_with_restarts\n', 'lr_scheduler_type', '"cosine_with_restarts"'],
    ['lora:\n  targets: q\n', 'lora.targets', '"q"'],
    ['lora:\n  targets: [q, attn]\n', 'lora.targets', '["q","attn"]'],
    ['lora: [1, 2]\n', 'lora', '[1,2]'],
    ['reward_weights: [1]\n', 'reward_weights', '[1]'],
    ['reward_weights:\n  format: high\n', 'reward_weights', 'format'],
    ['device: gpu\n', 'device', '"gpu"'],
    ['output_dir: ""\n', 'output_dir', '""'],
    ['num_train_epochs: .nan\n', 'num_train_epochs', 'NaN'],
    ['beta: .inf\n', 'beta', 'Infinity'],
  ];
  for (const [text, key, value] of cases) {
    const p = file(text);
    await rejects(t, loadConfig(p), { file: p, key, value, has: ['expected'] }, `${text.trim()}`);
  }
});

t.test('values out of range: ERR_CONFIG naming key, value and file', async (t) => {
  const cases: Array<[string, unknown]> = [
    ['learning_rate', 0], ['learning_rate', -1e-5], ['epsilon', -0.1], ['epsilon', 1], ['epsilon_high', -0.2],
    ['num_generations', 1], ['num_generations', 4.5], ['beta', -0.01], ['temperature', 0], ['top_p', 1.5], ['top_p', 0],
    ['top_k', -1], ['max_steps', 0], ['max_steps', -2], ['warmup_steps', -1], ['num_iterations', 0],
    ['max_completion_length', 0], ['prompts_per_step', 0], ['micro_batch_tokens', 0], ['logging_steps', 0],
    ['weight_decay', -0.1], ['max_grad_norm', -1], ['num_train_epochs', 0], ['seed', -1], ['seed', 2 ** 32],
    ['eval_vote', -1], ['sft_learning_rate', 0], ['importance_sampling_cap', 0], ['sql_timeout_ms', 0], ['max_prompt_length', 0],
  ];
  for (const [key, value] of cases) {
    const p = file(`${key}: ${JSON.stringify(value)}\n`);
    await rejects(t, loadConfig(p), { file: p, key, value: String(value), has: ['expected'] }, `${key}: ${value}`);
  }
  const p = file('lora:\n  rank: 0\n');
  await rejects(t, loadConfig(p), { file: p, key: 'lora.rank', value: '0' }, 'lora.rank: 0');
  const q = file('lora:\n  targets: [q, q]\n');
  await rejects(t, loadConfig(q), { file: q, key: 'lora.targets', value: '["q","q"]', has: ['distinct'] }, 'duplicate targets');
});

t.test('bad overrides name the override as the source', async (t) => {
  const src = `${SEED} (overrides)`;
  await rejects(t, loadConfig(SEED, { overrides: { learning_rate: -1 } }), { file: src, key: 'learning_rate', value: '-1' }, 'range');
  await rejects(t, loadConfig(SEED, { overrides: { max_stpes: 3 } }), { file: src, key: 'max_stpes', value: '3', has: ["did you mean 'max_steps'"] }, 'typo');
  await rejects(t, loadConfig(SEED, { overrides: { 'lora.rank': 'big' } }), { file: src, key: 'lora.rank', value: '"big"' }, 'nested');
  await rejects(t, () => parseOverride('beta'), { file: '--set', key: 'beta', has: ['key=value'] }, 'no = sign');
});

t.test('bad YAML and bad files', async (t) => {
  const p1 = file('learning_rate: 1e-5\n  beta: [0.1\n');
  await rejects(t, loadConfig(p1), { file: p1, key: '(yaml)', has: ['invalid YAML', 'line'] }, 'syntax error');
  const p2 = file('beta: 0.1\nbeta: 0.2\n');
  await rejects(t, loadConfig(p2), { file: p2, key: '(yaml)', has: ['invalid YAML'] }, 'duplicate key');
  const p3 = file('- learning_rate\n- beta\n');
  await rejects(t, loadConfig(p3), { file: p3, key: '(top level)', has: ['mapping'] }, 'a list, not a mapping');
  const missing = join(dir, 'nope.yaml');
  await rejects(t, loadConfig(missing), { file: missing, key: '(file)', has: ['cannot read'] }, 'missing file');
});

t.test('a valid config object is typed: every default key is a GrpoConfig key', async (t) => {
  const keys = Object.keys(GRPO_DEFAULTS) as Array<keyof GrpoConfig>;
  t.equal(keys.length, 42, 'forty-two keys, lora counted once');
  t.same(CONFIG_KEYS.filter((k) => !k.startsWith('lora.')).length, 41);
});

t.test("README's Configuration table lists every key with its default, and its example messages are real", async (t) => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('\n## ', readme.indexOf('## Configuration') + 5));
  const rows = new Map<string, string>();
  for (const m of section.matchAll(/^\| `([a-z_.]+)` \| ([^|]+) \|/gm)) rows.set(m[1]!, m[2]!.trim());
  t.same([...rows.keys()].sort(), [...CONFIG_KEYS].filter((k) => k !== 'lora').sort(), 'one row per key');
  const defaults = parseYaml(configToYaml(GRPO_DEFAULTS)) as Record<string, unknown>;
  for (const [key, shown] of rows) {
    const [head, sub] = key.split('.');
    const want = sub ? (defaults[head!] as Record<string, unknown>)[sub] : defaults[head!];
    t.same(parseYaml(shown), want, `${key}: the table's default ${shown} is the default`);
  }
  for (const [text, key] of [['learnig_rate: 0.0001\n', 'learnig_rate'], ['epsilon: 1.2\n', 'epsilon']] as const) {
    const p = file(text);
    const err = await loadConfig(p).catch((e: Error) => e);
    const msg = (err as Error).message.replace(p, 'configs/my.yaml');
    t.ok(section.includes(msg), `the README quotes the message for ${key}: ${msg}`);
  }
});
