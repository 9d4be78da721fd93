/**
 * Waits for a condition, never for a fixed time: `check` is called every `stepMs` until it returns
 * a truthy value, which is returned. On timeout the error names what was waited for (`what`),
 * how long, and the last value `check` gave (or `describe()`, when given: the state that
 * explains why it was not reached).
 */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | false | null> | T | undefined | false | null,
  opts: { timeoutMs?: number; stepMs?: number; describe?: () => unknown } = {},
): Promise<T> {
  const { timeoutMs = 20_000, stepMs = 20 } = opts;
  const start = Date.now();
  let last: unknown;
  for (;;) {
    const v = await check();
    if (v) return v;
    last = v;
    if (Date.now() - start > timeoutMs) {
      const state = opts.describe ? opts.describe() : last;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${opts.describe ? 'state' : 'last value'}: ${show(state)})`);
    }
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

function show(v: unknown): string {
  if (typeof v === 'string') return v.length > 2000 ? `…${v.slice(-2000)}` : v;
  try {
    const s = JSON.stringify(v);
    return s === undefined ? String(v) : s.length > 2000 ? `${s.slice(0, 2000)}…` : s;
  } catch {
    return String(v);
  }
}

/** Lets pending promise callbacks and I/O callbacks run once. */
export const settle = (): Promise<void> => new Promise((r) => setImmediate(r));
