/** Small helpers shared by the CLI commands. */
import { InvalidArgumentError } from 'commander';

export function parseIntArg(name: string, min = 0): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got '${v}'`);
    return n;
  };
}

export function parseFloatArg(name: string, min = -Infinity, max = Infinity): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}], got '${v}'`);
    return n;
  };
}

export function parseIntList(name: string): (v: string) => number[] {
  return (v: string) => v.split(',').map((x) => parseIntArg(name, 1)(x.trim()));
}

export function parseChoice<T extends string>(name: string, choices: readonly T[]): (v: string) => T {
  return (v: string) => {
    if (!(choices as readonly string[]).includes(v)) throw new InvalidArgumentError(`${name} must be one of ${choices.join(', ')}, got '${v}'`);
    return v as T;
  };
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + '\n');
}

/** A progress line on stderr for long work (only when stderr is a terminal or SQLR1_PROGRESS=1). */
export function progressLine(label: string): (frac: number, extra?: string) => void {
  const on = process.stderr.isTTY || process.env.SQLR1_PROGRESS === '1';
  let last = -1;
  return (frac: number, extra = '') => {
    if (!on) return;
    const pct = Math.floor(frac * 100);
    if (pct === last) return;
    last = pct;
    process.stderr.write(`\r${label} ${String(pct).padStart(3)}% ${extra}`.padEnd(60) + (frac >= 1 ? '\n' : ''));
  };
}
