// `npm test`'s runner: tap with its files `jobs` at a time (package.json "tap") and the cores shared out among
// them through SQLR1_THREADS unless it is set. ggml's CPU threads wait for each other at every operation, so two
// files that each take every core slow each other down: on the 2-core CI machine, two trainer tests side by side
// took 125 s with 2 threads each and 52 s with 1.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

const jobs = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).tap?.jobs ?? 1;
const env = { ...process.env };
env.SQLR1_THREADS ||= String(Math.max(1, Math.floor(availableParallelism() / jobs)));
// npm puts node_modules/.bin on PATH for its scripts.
const r = spawnSync('tap', process.argv.slice(2), { stdio: 'inherit', env });
if (r.error) throw r.error;
process.exit(r.status ?? 1);
