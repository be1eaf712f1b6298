import { compareResults, orderMatters } from './compare.js';
import type { SqlExecutor, SqlSuccess } from './executor.js';

export interface VoteResult {
  /** The chosen candidate's SQL and its position in the input. */
  sql: string;
  index: number;
  /** How many candidates returned a result equal to the chosen one's (itself included). */
  votes: number;
  result: SqlSuccess;
}

/**
 * Self-consistency over K candidate queries: runs them all and returns the candidate whose result is the most
 * common. Results are grouped by execution match against each group's first member (row order matters when
 * that member has ORDER BY); failed executions do not vote. Ties go to the group whose first member came
 * earliest. Returns null when every candidate failed (or there were none).
 */
export async function majorityVote(executor: SqlExecutor, dbPath: string, candidates: readonly string[]): Promise<VoteResult | null> {
  const results = await Promise.all(candidates.map((sql) => executor.run(dbPath, sql)));
  const groups: Array<{ index: number; result: SqlSuccess; votes: number }> = [];
  results.forEach((result, index) => {
    if (!result.ok) return;
    const group = groups.find((g) => compareResults(g.result.rows, result.rows, orderMatters(candidates[g.index] as string)));
    if (group) group.votes++;
    else groups.push({ index, result, votes: 1 });
  });
  let best: (typeof groups)[number] | null = null;
  for (const g of groups) if (!best || g.votes > best.votes) best = g;
  return best && { sql: candidates[best.index] as string, index: best.index, votes: best.votes, result: best.result };
}
