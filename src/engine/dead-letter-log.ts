import type { Logger } from 'pino';
import type { DeadLetter } from '../connectors/types.js';

/** Dead letters of one batch logged in full; the rest of the batch's are counted on one line. */
export const FULL_LINES_PER_BATCH = 3;
/** Reasons named on the counting line; the rest are added up under `other`. */
const MAX_REASONS = 10;

/**
 * A dead letter's reason without what varies from message to message (numbers, field names,
 * the input quoted after the error), so that a batch's dead letters group by what went wrong.
 */
export function reasonKind(error: string): string {
  return error
    .split(' Input:')[0]
    .replace(/(?<!UTF-)\d+/g, '#')
    .replace(/ \(and # more\)/, '')
    .replace(/field \S+/g, 'field X')
    .slice(0, 100);
}

/**
 * Logs a batch's dead letters at WARN: the first FULL_LINES_PER_BATCH each on a line of its own
 * (`message sent to the DLQ`: stage, source position, model, error), then, if there are more, one
 * line (`more messages sent to the DLQ`) with their count by reason. A hostile source that sends
 * hundreds of bad messages a batch then costs a few log lines, not hundreds, on the JavaScript
 * thread the other sources share; every record, with its payload, is in the DLQ
 * (`sluice dlq inspect`).
 */
export function logDeadLetters(log: Logger, records: DeadLetter[]): void {
  for (const r of records.slice(0, FULL_LINES_PER_BATCH)) {
    log.warn({ stage: r.stage, source: r.source, model: r.model, error: r.error }, 'message sent to the DLQ');
  }
  const rest = records.slice(FULL_LINES_PER_BATCH);
  if (!rest.length) return;
  const counts = new Map<string, number>();
  for (const r of rest) {
    const key = `${r.stage}${r.model ? ` (${r.model})` : ''}: ${reasonKind(r.error)}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  const sorted = [...counts].sort((a, b) => b[1] - a[1]);
  const by_reason: Record<string, number> = Object.fromEntries(sorted.slice(0, MAX_REASONS));
  const other = sorted.slice(MAX_REASONS).reduce((n, [, c]) => n + c, 0);
  if (other) by_reason.other = other;
  log.warn({ count: rest.length, by_reason, see: 'sluice dlq inspect' }, 'more messages sent to the DLQ');
}
