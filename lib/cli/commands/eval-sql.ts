import type { Command } from 'commander';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { Sqlr1Error } from '../../errors.js';
import { evalSql, formatScoreTable, readGoldFile, readPredFile } from '../../eval/eval-sql.js';
import { SqlExecutor } from '../../sql/executor.js';
import { EXEC_METRICS, type ExecMetric } from '../../sql/compare.js';
import { parseChoice, parseIntArg, progressLine } from '../util.js';

interface EvalSqlCliOptions {
  gold: string;
  pred: string;
  dbRoot: string;
  tables?: string;
  json?: string;
  timeoutMs: number;
  workers?: number;
  keepDistinct?: boolean;
  metric: ExecMetric;
}

async function readTableIds(path: string): Promise<Set<string>> {
  let data: unknown;
  try {
    data = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    throw new Sqlr1Error('ERR_DATA', `cannot read tables file ${path}: ${(e as Error).message}`, { cause: e });
  }
  if (!Array.isArray(data)) throw new Sqlr1Error('ERR_DATA', `tables file ${path}: expected an array of databases`);
  return new Set(data.map((d: unknown) => (typeof d === 'object' && d !== null ? String((d as { db_id?: unknown }).db_id) : '')));
}

/** Adds `sqlr1 eval-sql`: execution accuracy of a predictions file, per Spider hardness level. */
export function register(program: Command): void {
  program
    .command('eval-sql')
    .description("score predicted SQL against gold SQL by execution, per Spider hardness, like Spider's evaluation script")
    .requiredOption('--gold <file>', 'gold file: one "SQL<TAB>db_id" per line')
    .requiredOption('--pred <file>', 'predictions: one SQL per line, in gold order')
    .requiredOption('--db-root <dir>', 'directory holding <db_id>/<db_id>.sqlite')
    .option('--tables <file>', "Spider's tables.json; gold lines whose db_id it does not list are skipped")
    .option('--json <file>', 'write the scores and per-example results to this file')
    .option('--timeout-ms <n>', 'time limit per query in milliseconds', parseIntArg('--timeout-ms', 1), 5000)
    .option('--workers <n>', 'SQL worker processes (default: min(2, CPUs))', parseIntArg('--workers', 1))
    .option('--keep-distinct', 'keep DISTINCT when executing (the test-suite evaluator drops it by default)')
    .option('--metric <name>', "comparison: 'spider' (multiset rows, column permutations, ORDER BY respected) or 'bird' (set(pred) == set(gold))", parseChoice('--metric', EXEC_METRICS), 'spider')
    .action(async (o: EvalSqlCliOptions) => {
      const [gold, pred, tables] = await Promise.all([
        readGoldFile(o.gold),
        readPredFile(o.pred),
        o.tables ? readTableIds(o.tables) : undefined,
      ]);
      const executor = new SqlExecutor({ timeoutMs: o.timeoutMs, ...(o.workers ? { workers: o.workers } : {}) });
      try {
        const progress = progressLine('eval-sql');
        const report = await evalSql({
          gold, pred, dbRoot: o.dbRoot, executor, keepDistinct: o.keepDistinct ?? false, metric: o.metric, ...(tables ? { tables } : {}),
          onProgress: (done, total) => progress(done / total, `${done}/${total}`),
        });
        process.stdout.write(formatScoreTable(report));
        if (o.json) {
          // Written whole, then renamed: a reader never sees half a file.
          const tmp = `${o.json}.tmp-${process.pid}`;
          await writeFile(tmp, `${JSON.stringify(report, null, 1)}\n`);
          await rename(tmp, o.json);
        }
      } finally {
        await executor.close();
      }
    });
}
