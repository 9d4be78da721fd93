import { describe, expect, it } from 'vitest';
import type { DeadLetter } from '../../src/connectors/types.js';
import { FULL_LINES_PER_BATCH, logDeadLetters, reasonKind } from '../../src/engine/dead-letter-log.js';
import { eventLogger, type LogEvent } from '../helpers/pipeline.js';

const letter = (error: string, stage: DeadLetter['stage'] = 'decode', model?: string): DeadLetter => ({ payload: '{}', error, stage, source: { offset: 1 }, model, time: '' });

describe('dead-letter logging', () => {
  it('a batch with few dead letters logs each in full', () => {
    const events: LogEvent[] = [];
    logDeadLetters(eventLogger(events), [letter('invalid JSON: x'), letter('Conversion Error: y', 'transform', 'orders')]);
    expect(events.map((e) => [e.msg, e.stage, e.model, e.error])).toEqual([
      ['message sent to the DLQ', 'decode', undefined, 'invalid JSON: x'],
      ['message sent to the DLQ', 'transform', 'orders', 'Conversion Error: y'],
    ]);
  });

  it('past the first few, one line counts the rest by stage, model and reason', () => {
    const events: LogEvent[] = [];
    const records = [
      ...Array.from({ length: 300 }, (_, i) => letter(`message nests deeper than limits.max_depth (128) at byte ${i}`)),
      ...Array.from({ length: 200 }, (_, i) => letter(`type conflict: $.k${i} is a number in earlier messages but a string here`)),
      ...Array.from({ length: 7 }, () => letter('Conversion Error: Could not convert string to INT32', 'transform', 'orders')),
    ];
    logDeadLetters(eventLogger(events), records);
    expect(events.filter((e) => e.msg === 'message sent to the DLQ')).toHaveLength(FULL_LINES_PER_BATCH);
    const more = events.filter((e) => e.msg === 'more messages sent to the DLQ');
    expect(more).toHaveLength(1);
    expect(more[0].level).toBe(40);
    expect(more[0].count).toBe(records.length - FULL_LINES_PER_BATCH);
    expect(more[0].by_reason).toEqual({
      'decode: message nests deeper than limits.max_depth (#) at byte #': 300 - FULL_LINES_PER_BATCH,
      'decode: type conflict: $.k# is a number in earlier messages but a string here': 200,
      'transform (orders): Conversion Error: Could not convert string to INT#': 7,
    });
  });

  it('names at most ten reasons and adds up the rest under other', () => {
    const events: LogEvent[] = [];
    const records = Array.from({ length: FULL_LINES_PER_BATCH + 15 }, (_, i) => letter(`reason ${String.fromCharCode(97 + (i % 15))}`));
    logDeadLetters(eventLogger(events), records);
    const by = events.find((e) => e.msg === 'more messages sent to the DLQ')!.by_reason as Record<string, number>;
    expect(Object.keys(by)).toHaveLength(11);
    expect(Object.values(by).reduce((a, b) => a + b, 0)).toBe(15);
    expect(by.other).toBe(5);
  });

  it('reasonKind drops what varies between messages and the quoted input', () => {
    expect(reasonKind('invalid JSON: Malformed JSON at byte 27 of input: unexpected character. Input: {"a":')).toBe('invalid JSON: Malformed JSON at byte # of input: unexpected character.');
    expect(reasonKind("the message adds field $.k1234 (and 3 more) but incoming's schema has reached limits.max_columns (1000 fields)")).toBe(
      "the message adds field X but incoming's schema has reached limits.max_columns (# fields)",
    );
    expect(reasonKind('message is not valid UTF-8 at byte 5')).toBe('message is not valid UTF-8 at byte #');
  });
});
