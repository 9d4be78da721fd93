import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import fg from 'fast-glob';
import { z } from 'zod';
import { SluiceError } from '../../errors.js';
import { batching, dlqKey } from '../shared-config.js';
import type { ConnectorContext, MessageMeta, RawMessage, Source, SourceBatch } from '../types.js';


/** A line (or array element) of an input file; `_topic` is the file, `_offset` the line (or index). */
class FileMessage implements RawMessage {
  constructor(
    readonly payload: string,
    readonly coords: { file: string; line?: number; index?: number; offset?: number },
  ) {}

  get meta(): MessageMeta {
    return { topic: this.coords.file, offset: this.coords.line ?? this.coords.index };
  }
}

export const fileSourceSchema = z
  .object({
    type: z.literal('file'),
    path: z.string().min(1).describe('an NDJSON file, a directory of them, or a glob; .json files hold one message or an array'),
    follow: z.boolean().default(false).describe('keep tailing the files for new lines instead of stopping at the end'),
    poll_interval_ms: z.number().int().positive().default(250).describe('how often to look for new data when following'),
    ...batching,
    ...dlqKey,
  })
  .strict();
export type FileSourceConfig = z.output<typeof fileSourceSchema>;

interface FilePos {
  offset: number;
  line: number;
}
export interface FilePosition {
  files: Record<string, FilePos>;
  ordinal: number;
}

const DATA_EXT = /\.(ndjson|jsonl|json|txt)$/i;
const READ_CHUNK = 4 * 1024 * 1024;

export function ordinalKey(n: number): string {
  return String(n).padStart(12, '0');
}

/**
 * Reads NDJSON files in name order. The position (byte offset and line per file, plus a
 * global message ordinal) is the acknowledgement: the engine stores it with the WAL commit.
 */
export class FileSource implements Source {
  private pos: FilePosition = { files: {}, ordinal: 0 };
  private jsonCache = new Map<string, string[]>();

  constructor(
    private readonly cfg: FileSourceConfig,
    private readonly ctx: ConnectorContext,
  ) {}

  async open(position: unknown): Promise<void> {
    if (position && typeof position === 'object' && 'files' in position) {
      this.pos = structuredClone(position as FilePosition);
    }
    const files = await this.listFiles();
    if (files.length === 0 && !this.cfg.follow) {
      throw new SluiceError('CONNECT', `file source: no input files match ${this.cfg.path}`);
    }
  }

  private resolved(): string {
    return path.resolve(this.ctx.projectDir, this.cfg.path);
  }

  private async listFiles(): Promise<string[]> {
    const p = this.resolved();
    let files: string[];
    if (fg.isDynamicPattern(this.cfg.path)) {
      files = await fg(fg.convertPathToPattern(this.ctx.projectDir) + '/' + this.cfg.path.replace(/^\.\//, ''), { onlyFiles: true, absolute: true });
      if (path.isAbsolute(this.cfg.path)) files = await fg(this.cfg.path, { onlyFiles: true, absolute: true });
    } else {
      let st: fs.Stats | undefined;
      try {
        st = await fsp.stat(p);
      } catch {
        st = undefined;
      }
      if (!st) files = [];
      else if (st.isDirectory()) {
        files = (await fsp.readdir(p, { withFileTypes: true }))
          .filter((d) => d.isFile() && DATA_EXT.test(d.name) && !d.name.startsWith('.'))
          .map((d) => path.join(p, d.name));
      } else files = [p];
    }
    return files.sort();
  }

  private key(file: string): string {
    return path.relative(this.ctx.projectDir, file) || file;
  }

  async read(signal: AbortSignal): Promise<SourceBatch | null> {
    const max = this.cfg.batch_size;
    const messages: RawMessage[] = [];
    const startOrdinal = this.pos.ordinal;
    const deadline = Date.now() + this.cfg.batch_timeout_ms;
    for (;;) {
      const files = await this.listFiles();
      let progressed = false;
      for (const file of files) {
        if (messages.length >= max) break;
        const got = file.toLowerCase().endsWith('.json')
          ? await this.readJsonFile(file, max - messages.length, messages)
          : await this.readNdjson(file, max - messages.length, messages);
        if (got > 0) progressed = true;
      }
      if (messages.length >= max || signal.aborted) break;
      if (!this.cfg.follow) {
        if (!progressed && messages.length === 0) return null;
        if (!progressed) break;
        continue;
      }
      if (progressed) continue;
      if (messages.length > 0 && Date.now() >= deadline) break;
      if (messages.length === 0 && Date.now() >= deadline) break;
      await sleep(Math.min(this.cfg.poll_interval_ms, Math.max(1, deadline - Date.now())), signal);
      if (signal.aborted) break;
    }
    return {
      messages,
      position: structuredClone(this.pos),
      first: ordinalKey(startOrdinal),
      last: ordinalKey(this.pos.ordinal - 1),
    };
  }

  private async readNdjson(file: string, want: number, out: RawMessage[]): Promise<number> {
    const key = this.key(file);
    const fp = (this.pos.files[key] ??= { offset: 0, line: 0 });
    let st: fs.Stats;
    try {
      st = await fsp.stat(file);
    } catch {
      return 0;
    }
    if (st.size < fp.offset) {
      this.ctx.log.warn({ file: key }, 'input file shrank below the stored position; reading it again from the start');
      fp.offset = 0;
      fp.line = 0;
    }
    if (st.size === fp.offset) return 0;
    const fh = await fsp.open(file, 'r');
    let got = 0;
    try {
      let carry: Buffer = Buffer.alloc(0);
      let readAt = fp.offset;
      while (got < want && readAt < st.size) {
        const len = Math.min(READ_CHUNK, st.size - readAt);
        const chunk = Buffer.allocUnsafe(len);
        const { bytesRead } = await fh.read(chunk, 0, len, readAt);
        if (bytesRead === 0) break;
        readAt += bytesRead;
        const buf = carry.length ? Buffer.concat([carry, chunk.subarray(0, bytesRead)]) : chunk.subarray(0, bytesRead);
        let start = 0;
        const atEof = readAt >= st.size;
        while (got < want) {
          let nl = buf.indexOf(10, start);
          let end: number;
          if (nl === -1) {
            // An unterminated last line is a message once the file is complete (not followed).
            if (!(atEof && !this.cfg.follow) || start >= buf.length) break;
            nl = buf.length;
            end = buf.length;
          } else end = nl;
          if (end > start && buf[end - 1] === 13) end--;
          fp.line++;
          if (end > start && !isBlank(buf, start, end)) {
            out.push(new FileMessage(buf.toString('utf8', start, end), { file: key, line: fp.line, offset: fp.offset }));
            this.pos.ordinal++;
            got++;
          }
          fp.offset += Math.min(nl + 1, buf.length) - start;
          start = Math.min(nl + 1, buf.length);
          if (start >= buf.length) break;
        }
        carry = Buffer.from(buf.subarray(start));
        if (got >= want) break;
      }
    } finally {
      await fh.close();
    }
    return got;
  }

  private async readJsonFile(file: string, want: number, out: RawMessage[]): Promise<number> {
    const key = this.key(file);
    const fp = (this.pos.files[key] ??= { offset: 0, line: 0 });
    let items = this.jsonCache.get(file);
    if (!items) {
      const text = await fsp.readFile(file, 'utf8');
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
        items = Array.isArray(parsed) ? parsed.map((m) => JSON.stringify(m)) : [JSON.stringify(parsed)];
      } catch {
        items = [text];
      }
      this.jsonCache.set(file, items);
    }
    let got = 0;
    while (got < want && fp.offset < items.length) {
      out.push(new FileMessage(items[fp.offset], { file: key, index: fp.offset }));
      fp.offset++;
      fp.line = fp.offset;
      this.pos.ordinal++;
      got++;
    }
    return got;
  }

  async ack(_batch: SourceBatch): Promise<void> {
    // The position is committed with the WAL state; nothing to tell the files.
  }

  async close(): Promise<void> {
    this.jsonCache.clear();
  }
}

function isBlank(buf: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = buf[i];
    if (c !== 32 && c !== 9 && c !== 13) return false;
  }
  return true;
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
