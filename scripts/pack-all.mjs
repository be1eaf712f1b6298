// Packs the publishable tarballs into one folder (default packages/, git-ignored):
//   sqlr1-native-<v>.tgz                     TypeScript output, types, configs, CLI, sources for a source build,
//                                            and the Qwen2 vocabulary (assets/, copied from the fetched bundle)
//   sqlr1-native-linux-x64-<v>.tgz           npm/linux-x64 (run `npm run prebuild` first)
//   sqlr1-native-linux-x64-cuda13-<v>.tgz    npm/linux-x64-cuda13 (run `npm run prebuild:cuda` first; skipped
//                                            with a note when its binary is absent)
//
//   node scripts/pack-all.mjs [--out DIR] [--cpu-only]
//   node scripts/pack-all.mjs --assets-only   only copy the vocabulary into assets/ (the prepack hook)
//
// The main package's optionalDependencies on the platform packages are added to the packed package.json here
// (the convention of napi-rs's `prepublish`): the repository's package.json cannot list them before they are
// published, since `npm ci` needs every dependency in package-lock.json. All versions must be equal.
import { execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
const outDir = resolve(argv.includes('--out') ? argv[argv.indexOf('--out') + 1] : join(root, 'packages'));
const log = (m) => process.stderr.write(`[sqlr1 pack] ${m}\n`);
const fail = (m) => { log(m); process.exit(1); };
const readJson = (f) => JSON.parse(readFileSync(f, 'utf8'));
const npm = (args, cwd) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });

const VOCAB = 'ggml-vocab-qwen2.gguf';
function copyVocab() {
  const src = join(root, 'native', '.deps', 'llama.cpp', 'models', VOCAB);
  if (!existsSync(src)) fail(`${src} is missing: run \`node scripts/fetch-ggml.mjs\` first`);
  mkdirSync(join(root, 'assets'), { recursive: true });
  copyFileSync(src, join(root, 'assets', VOCAB));
}

copyVocab();
if (argv.includes('--assets-only')) process.exit(0);

const main = readJson(join(root, 'package.json'));
const platforms = [
  { dir: join(root, 'npm', 'linux-x64'), required: true },
  { dir: join(root, 'npm', 'linux-x64-cuda13'), required: false },
].filter((p) => !(argv.includes('--cpu-only') && !p.required));

log('compiling the TypeScript into dist/');
execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.json')], { stdio: 'inherit' });

rmSync(outDir, { recursive: true, force: true });
mkdirSync(outDir, { recursive: true });
const packed = [];
function pack(dir) {
  const [info] = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', outDir], dir));
  packed.push({ name: info.name, file: info.filename, packedBytes: info.size, unpackedBytes: info.unpackedSize, files: info.entryCount });
}

// The main package: staged with the files `npm pack` would take, plus optionalDependencies.
const files = JSON.parse(npm(['pack', '--dry-run', '--json', '--ignore-scripts'], root))[0].files.map((f) => f.path);
if (!files.includes(`assets/${VOCAB}`)) fail(`assets/${VOCAB} is not in the package's files list`);
if (!files.some((f) => f.startsWith('dist/'))) fail('dist/ is not in the package');
const stage = join(root, 'prebuild', 'stage', 'sqlr1-native');
rmSync(stage, { recursive: true, force: true });
for (const f of files) {
  mkdirSync(dirname(join(stage, f)), { recursive: true });
  cpSync(join(root, f), join(stage, f));
}
const staged = { ...main, optionalDependencies: {} };
for (const { dir } of [{ dir: join(root, 'npm', 'linux-x64') }, { dir: join(root, 'npm', 'linux-x64-cuda13') }]) {
  const p = readJson(join(dir, 'package.json'));
  if (p.version !== main.version) fail(`${p.name} is at ${p.version} but sqlr1-native at ${main.version}: versions must match`);
  staged.optionalDependencies[p.name] = main.version;
}
writeFileSync(join(stage, 'package.json'), JSON.stringify(staged, null, 2) + '\n');
pack(stage);

for (const { dir, required } of platforms) {
  const name = readJson(join(dir, 'package.json')).name;
  if (!existsSync(join(dir, 'lib', 'sqlr1.node'))) {
    if (required) fail(`${name} has no binary: run \`npm run prebuild\` first`);
    log(`${name}: no binary in ${dir}/lib (run \`npm run prebuild:cuda\` on a CUDA machine); not packed`);
    continue;
  }
  const info = readJson(join(dir, 'lib', 'build-info.json'));
  if (info.version !== main.version) fail(`${name}'s binary was built for ${info.version}, not ${main.version}: rebuild it`);
  pack(dir);
}

const mb = (b) => (b / 1e6).toFixed(1) + ' MB';
for (const p of packed) log(`${p.file}: ${mb(p.packedBytes)} packed, ${mb(p.unpackedBytes)} unpacked, ${p.files} files`);
writeFileSync(join(outDir, 'packages.json'), JSON.stringify(packed, null, 2) + '\n');
console.log(JSON.stringify(packed.map((p) => ({ ...p, bytesOnDisk: statSync(join(outDir, p.file)).size }))));
