import { isNode, parseSelect, subquery, type AstNode } from '../sql/parse.js';

/** Spider's difficulty levels. */
export type Hardness = 'easy' | 'medium' | 'hard' | 'extra';
export const HARDNESS_LEVELS: readonly Hardness[] = ['easy', 'medium', 'hard', 'extra'];

/*
 * Spider's parsed-SQL JSON (the `sql` field of train_spider.json and dev.json), as written by process_sql.py:
 *   col_unit  = [agg_id, col_id, isDistinct]
 *   val_unit  = [unit_op, col_unit1, col_unit2 | null]
 *   cond_unit = [not_op, op_id, val_unit, val1, val2]  (a value is a number, a string, a col_unit or a nested sql)
 *   condition = [cond_unit, 'and' | 'or', cond_unit, ...]
 */
export type SpiderColUnit = [agg: number, col: number | string, distinct: boolean];
export type SpiderValUnit = [op: number, col1: SpiderColUnit, col2: SpiderColUnit | null];
export type SpiderCondUnit = [not: boolean, op: number, val: SpiderValUnit, val1: unknown, val2: unknown];
export type SpiderCondition = Array<SpiderCondUnit | 'and' | 'or'>;

export interface SpiderSql {
  select: [distinct: boolean, items: Array<[agg: number, val: SpiderValUnit]>];
  from: { table_units: Array<[kind: string, unit: unknown]>; conds: SpiderCondition };
  where: SpiderCondition;
  groupBy: SpiderColUnit[];
  having: SpiderCondition;
  orderBy: [] | [direction: string, items: SpiderValUnit[]];
  limit: number | null;
  intersect: SpiderSql | null;
  union: SpiderSql | null;
  except: SpiderSql | null;
}

// Operator tables of process_sql.py; the indices are what the JSON stores.
const WHERE_OPS = ['not', 'between', '=', '>', '<', '>=', '<=', '!=', 'in', 'like', 'is', 'exists'];
const UNIT_OPS = ['none', '-', '+', '*', '/'];
const AGG_OPS = ['none', 'max', 'min', 'count', 'sum', 'avg'];
const LIKE = WHERE_OPS.indexOf('like');

const condUnits = (c: SpiderCondition): SpiderCondUnit[] => c.filter((u): u is SpiderCondUnit => Array.isArray(u));
const connectors = (c: SpiderCondition): string[] => c.filter((u): u is 'and' | 'or' => typeof u === 'string');
const isSql = (v: unknown): v is SpiderSql => isNode(v) && 'select' in v;

/*
 * evaluation.py's has_agg is `unit[0] != AGG_OPS.index('none')`, applied to whatever list it is given. On a
 * cond_unit, unit[0] is not_op, and on the having list the 'and'/'or' strings count as well (their first
 * character is never 0). These quirks shape the official hardness counts, so they are kept.
 */
function hasAgg(unit: unknown): boolean {
  if (typeof unit === 'string') return true;
  if (!Array.isArray(unit)) return false;
  const first: unknown = unit[0];
  return first !== 0 && first !== false;
}

const countAgg = (units: readonly unknown[]): number => units.filter(hasAgg).length;

/** evaluation.py count_component1: WHERE, GROUP BY, ORDER BY, LIMIT, each join, each OR, each LIKE. */
export function countComponent1(sql: SpiderSql): number {
  let count = 0;
  if (sql.where.length > 0) count++;
  if (sql.groupBy.length > 0) count++;
  if (sql.orderBy.length > 0) count++;
  if (sql.limit !== null) count++;
  if (sql.from.table_units.length > 0) count += sql.from.table_units.length - 1;
  const all = [...sql.from.conds, ...sql.where, ...sql.having];
  count += connectors(all).filter((t) => t === 'or').length;
  count += condUnits(all).filter((u) => u[1] === LIKE).length;
  return count;
}

/** evaluation.py count_component2: nested queries in conditions, plus INTERSECT / UNION / EXCEPT. */
export function countComponent2(sql: SpiderSql): number {
  let count = 0;
  for (const u of condUnits([...sql.from.conds, ...sql.where, ...sql.having])) {
    if (isSql(u[3])) count++;
    if (isSql(u[4])) count++;
  }
  if (sql.intersect) count++;
  if (sql.except) count++;
  if (sql.union) count++;
  return count;
}

/** evaluation.py count_others: more than one aggregate, select column, where condition or group-by column. */
export function countOthers(sql: SpiderSql): number {
  let aggs = countAgg(sql.select[1]) + countAgg(condUnits(sql.where)) + countAgg(sql.groupBy);
  const items = sql.orderBy[1];
  if (items) {
    aggs += countAgg([...items.map((v) => v[1]).filter(Boolean), ...items.map((v) => v[2]).filter(Boolean)]);
  }
  aggs += countAgg(sql.having);
  let count = 0;
  if (aggs > 1) count++;
  if (sql.select[1].length > 1) count++;
  if (sql.where.length > 1) count++;
  if (sql.groupBy.length > 1) count++;
  return count;
}

/** Spider's eval_hardness over a parsed query. */
export function hardnessOfParsed(sql: SpiderSql): Hardness {
  const c1 = countComponent1(sql);
  const c2 = countComponent2(sql);
  const others = countOthers(sql);
  if (c1 <= 1 && others === 0 && c2 === 0) return 'easy';
  if ((others <= 2 && c1 <= 1 && c2 === 0) || (c1 <= 2 && others < 2 && c2 === 0)) return 'medium';
  if ((others > 2 && c1 <= 2 && c2 === 0) || (c1 > 2 && c1 <= 3 && others <= 2 && c2 === 0) || (c1 <= 1 && others === 0 && c2 <= 1)) {
    return 'hard';
  }
  return 'extra';
}

// ---- From SQL text: node-sql-parser's AST mapped onto the same shape (column ids are not needed to count). ----

const BINARY_WHERE_OPS: Record<string, [not: boolean, op: string]> = {
  BETWEEN: [false, 'between'], 'NOT BETWEEN': [true, 'between'], '=': [false, '='], '==': [false, '='],
  '>': [false, '>'], '<': [false, '<'], '>=': [false, '>='], '<=': [false, '<='], '!=': [false, '!='],
  '<>': [false, '!='], IN: [false, 'in'], 'NOT IN': [true, 'in'], LIKE: [false, 'like'], 'NOT LIKE': [true, 'like'],
  IS: [false, 'is'], 'IS NOT': [false, 'is'],
};

function colUnit(e: unknown): SpiderColUnit {
  const agg = isNode(e) && e['type'] === 'aggr_func' ? AGG_OPS.indexOf(String(e['name']).toLowerCase()) : 0;
  return [Math.max(agg, 0), 0, false];
}

function valUnit(e: unknown): SpiderValUnit {
  if (isNode(e) && e['type'] === 'binary_expr') {
    const op = UNIT_OPS.indexOf(String(e['operator']));
    if (op > 0) return [op, colUnit(e['left']), colUnit(e['right'])];
  }
  return [0, colUnit(e), null];
}

function value(e: unknown): unknown {
  const sub = subquery(e);
  return sub ? fromAst(sub) : 'value';
}

function condition(e: unknown, negate = false): SpiderCondition {
  if (!isNode(e)) return [];
  const op = String(e['operator'] ?? '').toUpperCase();
  if (e['type'] === 'binary_expr' && (op === 'AND' || op === 'OR')) {
    return [...condition(e['left']), op.toLowerCase() as 'and' | 'or', ...condition(e['right'])];
  }
  if (e['type'] === 'unary_expr' && op === 'NOT') return condition(e['expr'], true);
  const known = BINARY_WHERE_OPS[op];
  const opId = known ? WHERE_OPS.indexOf(known[1]) : WHERE_OPS.indexOf('exists');
  const not = negate || (known?.[0] ?? false);
  const right = e['right'];
  if (op.endsWith('BETWEEN') && isNode(right) && Array.isArray(right['value'])) {
    const [low, high] = right['value'] as unknown[];
    return [[not, opId, valUnit(e['left']), value(low), value(high)]];
  }
  return [[not, opId, valUnit(e['left'] ?? e['expr']), value(right), null]];
}

function asList(v: unknown): unknown[] {
  if (Array.isArray(v)) return v;
  if (isNode(v) && Array.isArray(v['columns'])) return v['columns'];
  return [];
}

/** Maps one SELECT of node-sql-parser's AST to Spider's parsed-SQL shape. */
export function fromAst(ast: AstNode): SpiderSql {
  const columns = asList(ast['columns']);
  const from = asList(ast['from']);
  const fromConds: SpiderCondition = [];
  for (const f of from) {
    if (!isNode(f) || !f['on']) continue;
    if (fromConds.length > 0) fromConds.push('and');
    fromConds.push(...condition(f['on']));
  }
  const order = asList(ast['orderby']);
  const limit = isNode(ast['limit']) ? asList(ast['limit']['value']) : [];
  const limitValue = isNode(limit[0]) ? Number(limit[0]['value']) : null;
  const next = isNode(ast['_next']) ? fromAst(ast['_next']) : null;
  const direction = isNode(order[0]) ? String(order[0]['type'] ?? 'asc').toLowerCase() : 'asc';
  return {
    select: [ast['distinct'] != null, columns.map((c) => {
      const expr = isNode(c) ? c['expr'] : c;
      const v = valUnit(expr);
      // An aggregate over the whole item is the item's own agg_id, as parse_select stores it.
      return v[0] === 0 && v[1][0] !== 0 ? [v[1][0], [0, [0, 0, false], null]] : [0, v];
    })],
    from: {
      table_units: from.map((f) => {
        const sub = subquery(f);
        return sub ? ['sql', fromAst(sub)] : ['table_unit', 0];
      }),
      conds: fromConds,
    },
    where: condition(ast['where']),
    groupBy: asList(ast['groupby']).map(colUnit),
    having: condition(ast['having']),
    orderBy: order.length > 0 ? [direction, order.map((o) => valUnit(isNode(o) ? o['expr'] : o))] : [],
    limit: limitValue,
    intersect: null,
    // The operator is not known after parseSelect (see there); counts treat all three alike.
    union: next,
    except: null,
  };
}

/**
 * Spider's hardness (easy / medium / hard / extra, evaluation.py `eval_hardness`). Pass the `sql` field of a
 * Spider example when there is one (the official path); SQL text is parsed with node-sql-parser and mapped to
 * the same structure. Returns null when the text cannot be parsed.
 */
export function classifyHardness(query: string | SpiderSql): Hardness | null {
  if (typeof query !== 'string') return hardnessOfParsed(query);
  const ast = parseSelect(query);
  return ast ? hardnessOfParsed(fromAst(ast)) : null;
}
