import { z } from 'zod';

// Durations in config files: `15` (seconds), '500 ms', '10 seconds', '5m', '1 hour', '2 days'.

const DURATION_UNITS: Record<string, string> = {
  us: 'microseconds',
  microsecond: 'microseconds',
  microseconds: 'microseconds',
  ms: 'milliseconds',
  millisecond: 'milliseconds',
  milliseconds: 'milliseconds',
  s: 'seconds',
  sec: 'seconds',
  second: 'seconds',
  seconds: 'seconds',
  m: 'minutes',
  min: 'minutes',
  minute: 'minutes',
  minutes: 'minutes',
  h: 'hours',
  hour: 'hours',
  hours: 'hours',
  d: 'days',
  day: 'days',
  days: 'days',
};

/** A duration: a number of seconds, or a number and a unit ('500 ms', '10 seconds', '5m', '1 hour'); as interval text. */
export const durationSchema = z.union([z.number().nonnegative(), z.string()]).transform((v, ctx) => {
  if (typeof v === 'number') return `${v} seconds`;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$/.exec(v);
  const unit = m ? DURATION_UNITS[m[2].toLowerCase()] : undefined;
  if (!m || !unit) {
    ctx.addIssue({ code: 'custom', message: `"${v}" is not a duration: a number of seconds, or a number and a unit (ms, s, m, h, d), such as '10 seconds'` });
    return z.NEVER;
  }
  return `${m[1]} ${unit}`;
});

const UNIT_MS: Record<string, number> = { microseconds: 0.001, milliseconds: 1, seconds: 1000, minutes: 60_000, hours: 3_600_000, days: 86_400_000 };

/** Milliseconds of a duration as durationSchema gives it ('10 seconds'). */
export function durationMs(text: string): number {
  const [n, unit] = text.split(' ');
  return Number(n) * UNIT_MS[unit];
}
