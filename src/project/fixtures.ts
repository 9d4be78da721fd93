import fs from 'node:fs';
import type { RawMessage } from '../connectors/types.js';

/**
 * Messages of a fixture file: a JSON object (one message), a JSON array (many), or NDJSON.
 * Lines that are not JSON are kept as they are, so fixtures can exercise the DLQ.
 */
export function readFixture(file: string): RawMessage[] {
  const text = fs.readFileSync(file, 'utf8');
  try {
    const v = JSON.parse(text) as unknown;
    const list = Array.isArray(v) ? v : [v];
    return list.map((m, i) => ({ payload: JSON.stringify(m), coords: { file, index: i } }));
  } catch {
    const out: RawMessage[] = [];
    text.split('\n').forEach((line, i) => {
      if (line.trim()) out.push({ payload: line.replace(/\r$/, ''), coords: { file, line: i + 1 } });
    });
    return out;
  }
}
