import fsp from 'node:fs/promises';
import path from 'node:path';
import type { PollLimits, RawMessage, Source, SourceChunk } from '../types.js';
import { readDeadLetters } from './file-dlq.js';
import { batchCut } from '../batch-cut.js';

/**
 * Reads the payloads of a set-aside DLQ file back into the pipeline. Keys carry the file's
 * stamp so output files of a replay never share a name with the source's own.
 */
export class DlqReplaySource implements Source {
  private records: { payload: string; source: unknown }[] = [];
  private next = 0;
  private readonly stamp: string;

  constructor(readonly file: string) {
    this.stamp = path
      .basename(file)
      .replace(/^replay-/, '')
      .replace(/\.ndjson$/, '')
      .replace(/[^A-Za-z0-9]/g, '');
  }

  async open(position: unknown): Promise<void> {
    this.records = await readDeadLetters(this.file);
    const p = position as { next?: number } | undefined;
    this.next = typeof p?.next === 'number' ? p.next : 0;
  }

  private key(n: number): string {
    return `dlq${this.stamp}x${String(n).padStart(9, '0')}`;
  }

  async poll(limits: PollLimits): Promise<SourceChunk | null> {
    if (this.next >= this.records.length) return null;
    const first = this.next;
    const { n, full } = batchCut(this.records.length - first, (i) => Buffer.byteLength(this.records[first + i].payload), limits);
    const end = first + n;
    const messages: RawMessage[] = [];
    for (let i = first; i < end; i++) {
      messages.push({ payload: this.records[i].payload, coords: { dlq_file: path.basename(this.file), record: i, original: this.records[i].source } });
    }
    this.next = end;
    return { messages, full, position: { next: end }, first: this.key(first), last: this.key(end - 1) };
  }

  async ack(): Promise<void> {}

  async close(): Promise<void> {}

  static async pendingFiles(dir: string): Promise<string[]> {
    try {
      return (await fsp.readdir(dir))
        .filter((f) => /^replay-.*\.ndjson$/.test(f))
        .sort()
        .map((f) => path.join(dir, f));
    } catch {
      return [];
    }
  }
}
