import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { DeadLetter, DeadLetterQueue } from '../types.js';
import { fsyncDir } from '../../util/fs-durable.js';

export const DLQ_FILE = 'dead-letters.ndjson';

/**
 * A dead-letter directory: one append-only NDJSON file, fsynced on every append. The committed
 * length is stored with the WAL state, so records of a batch that never committed are cut off
 * on recovery and written again, once, when the batch is replayed.
 */
export class FileDeadLetterQueue implements DeadLetterQueue {
  readonly file: string;
  private size = 0;

  constructor(readonly dir: string) {
    this.file = path.join(dir, DLQ_FILE);
  }

  async open(): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true });
    try {
      this.size = (await fsp.stat(this.file)).size;
    } catch {
      this.size = 0;
    }
  }

  async append(records: DeadLetter[]): Promise<void> {
    if (records.length === 0) return;
    const data = records.map(({ original: _o, ...r }) => JSON.stringify(r)).join('\n') + '\n';
    const existed = fs.existsSync(this.file);
    const fh = await fsp.open(this.file, 'a');
    try {
      // writeFile writes it all or throws: a single write() may take only part of it (a disk
      // that fills up), and that part must not count as appended.
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (!existed) await fsyncDir(this.dir);
    this.size += Buffer.byteLength(data);
  }

  mark(): unknown {
    return { bytes: this.size };
  }

  async recover(mark: unknown): Promise<void> {
    const bytes = (mark as { bytes?: number } | undefined)?.bytes;
    if (typeof bytes !== 'number') return;
    let size = 0;
    try {
      size = (await fsp.stat(this.file)).size;
    } catch {
      return;
    }
    if (size > bytes) {
      await fsp.truncate(this.file, bytes);
      const fh = await fsp.open(this.file, 'r+');
      await fh.sync();
      await fh.close();
    }
    this.size = Math.min(size, bytes);
  }

  async inspect(limit: number): Promise<DeadLetter[]> {
    return (await readDeadLetters(this.file)).slice(0, limit);
  }

  async close(): Promise<void> {}
}

export async function readDeadLetters(file: string): Promise<DeadLetter[]> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch {
    return [];
  }
  const out: DeadLetter[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as DeadLetter);
    } catch {
      // a torn last line from a crash mid-append; the batch it belonged to is replayed
    }
  }
  return out;
}

/** The dead-letter directory `dir` (relative to the project directory), opened; undefined when no directory is set. */
export async function openDirectoryDlq(dir: string | undefined, projectDir: string): Promise<FileDeadLetterQueue | undefined> {
  if (!dir) return undefined;
  const q = new FileDeadLetterQueue(path.resolve(projectDir, dir));
  await q.open();
  return q;
}
