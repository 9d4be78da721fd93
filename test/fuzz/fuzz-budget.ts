import fc from 'fast-check';

/**
 * How long the fuzz suites run. `npm test` runs them with a fixed seed and a small time budget;
 * to run longer:
 *
 *   SLUICE_FUZZ_SECONDS=600 npx vitest run test/fuzz   # each file spreads 600 s over its properties
 *   SLUICE_FUZZ_RUNS=5000 npx vitest run test/fuzz     # each property runs 5000 cases, no time limit
 *   SLUICE_FUZZ_SEED=42 ...                            # another sequence of cases (default: fixed)
 *
 * With both, a property stops at whichever comes first. A failure prints fast-check's
 * counterexample, its seed and path: SLUICE_FUZZ_SEED=<seed> replays the same sequence.
 */
const int = (v: string | undefined): number | undefined => {
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`expected a positive number, got "${v}"`);
  return n;
};

export const FUZZ_SEED = int(process.env.SLUICE_FUZZ_SEED) ?? 0x51_1ce;
const RUNS = int(process.env.SLUICE_FUZZ_RUNS);
const SECONDS = int(process.env.SLUICE_FUZZ_SECONDS);

/** True when asked to run longer than `npm test` does. */
export const FUZZ_LONG = RUNS !== undefined || SECONDS !== undefined;

export interface Budget {
  params: fc.Parameters<unknown>;
  /** vitest's timeout for the test running the property. */
  timeout: number;
  /** Seconds the property may start cases for (undefined: no limit, SLUICE_FUZZ_RUNS alone). */
  seconds?: number;
}

/**
 * Parameters for one property: `runs` cases and at most `share` of `defaultSeconds` by
 * default; SLUICE_FUZZ_RUNS / SLUICE_FUZZ_SECONDS override (see above). Wrap the check in
 * timed(): past the time, the remaining cases pass without running (fast-check is never
 * interrupted in the middle of a case, whose work would go on under the next property).
 */
export function budget(runs: number, share: number, defaultSeconds: number): Budget {
  const seconds = SECONDS !== undefined ? SECONDS * share : RUNS !== undefined ? undefined : defaultSeconds * share;
  const numRuns = RUNS ?? (SECONDS !== undefined ? 1_000_000_000 : runs);
  // Asked for a time alone: the (trivial) cases past it are cut short soon after.
  const plugins = SECONDS !== undefined && RUNS === undefined ? [fc.interruptAfterTimeLimit((SECONDS * share + 30) * 1000)] : [];
  return {
    params: { seed: FUZZ_SEED, numRuns, plugins } as fc.Parameters<unknown>,
    // Past the time, a failure still shrinks (SHRINK_SECONDS, and the case running then).
    timeout: seconds !== undefined ? seconds * 1000 + 120_000 : 24 * 3600_000,
    seconds,
  };
}

/** How long a failure is shrunk for, at most (then the smallest counterexample so far is reported). */
const SHRINK_SECONDS = FUZZ_LONG ? 120 : 10;

/**
 * The check, run for the cases that start within the budget's time (counted from the first
 * case); once one failed, the cases fast-check tries to shrink it run for SHRINK_SECONDS more
 * (past that, they pass without running, which ends the shrinking).
 */
export function timed<A extends unknown[]>(b: Budget, check: (...args: A) => Promise<void> | void): (...args: A) => Promise<void> {
  let start: number | undefined;
  let failedAt: number | undefined;
  return async (...args: A) => {
    start ??= Date.now();
    if (failedAt === undefined && b.seconds !== undefined && Date.now() - start > b.seconds * 1000) return;
    if (failedAt !== undefined && b.seconds !== undefined && Date.now() - failedAt > SHRINK_SECONDS * 1000) return;
    try {
      await check(...args);
    } catch (e) {
      failedAt ??= Date.now();
      throw e;
    }
  };
}

/** A string for a failure message: escaped, and cut in the middle past `max` characters. */
export function preview(s: string, max = 400): string {
  const j = visible(JSON.stringify(s));
  return j.length <= max ? j : `${j.slice(0, max - 120)} …(${j.length} chars)… ${j.slice(-100)}`;
}

/** Invisible characters (a BOM, U+2028, format and private-use characters) as \\uXXXX escapes. */
function visible(s: string): string {
  return s.replace(/[\p{Cc}\p{Cf}\p{Co}\p{Zl}\p{Zp}\u00a0\ufffd]/gu, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Bytes as readable text: UTF-8 where valid, \xHH for every byte that is not. */
export function showBytes(b: Uint8Array, max = 400): string {
  let out = '';
  let i = 0;
  const dec = new TextDecoder('utf-8', { fatal: true });
  while (i < b.length && out.length < max * 2) {
    const c = b[i];
    if (c < 0x80) {
      out += c === 0x22 ? '\\"' : c === 0x5c ? '\\\\' : c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, '0')}`;
      i++;
      continue;
    }
    const len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
    let ch: string | undefined;
    if (len > 1 && i + len <= b.length) {
      try {
        ch = dec.decode(b.subarray(i, i + len));
      } catch {
        ch = undefined;
      }
    }
    if (ch !== undefined) {
      out += visible(ch);
      i += len;
    } else {
      out += `\\x${c.toString(16).padStart(2, '0')}`;
      i++;
    }
  }
  const shown = `"${out}"`;
  if (shown.length <= max && i >= b.length) return shown;
  return `${shown.slice(0, max - 120)} …(${b.length} bytes)… ${showBytes(b.subarray(Math.max(i, b.length - 60)), 200)}`;
}
