import type fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { SluiceError } from '../../errors.js';
import { sleep } from '../../util/retry.js';
import type { FileSourceConfig } from './file-config.js';
import type { ConnectorContext, MessageMeta, PayloadBlock, PollLimits, RawMessage, Source, SourceChunk } from '../types.js';

/**
 * A line (or array element) of an input file, kept as bytes in its batch's block: the payload
 * string is made only when asked for (dead letters). `_topic` is the file, `_offset` the line
 * (or the index in a JSON array).
 */
class FileMessage implements RawMessage {
  constructor(
    private readonly block: PayloadBlock,
    private readonly i: number,
    private readonly file: string,
    /** The line, or for an element of a JSON array its index. */
    private readonly at: number,
    /** The line's byte offset; undefined for an element of a JSON array. */
    private readonly offset: number | undefined,
  ) {}

  get payload(): string {
    return this.block.data.toString('utf8', this.block.starts[this.i], this.block.ends[this.i]);
  }

  get coords(): { file: string; line?: number; index?: number; offset?: number } {
    return this.offset === undefined ? { file: this.file, index: this.at } : { file: this.file, line: this.at, offset: this.offset };
  }

  get meta(): MessageMeta {
    return { topic: this.file, offset: this.at };
  }
}

/**
 * The bytes of one batch, read straight into one buffer: message i is data[starts[i], ends[i]).
 * Lines of a file follow each other there with their newlines, so a batch of an NDJSON file
 * usually reaches DuckDB without a copy (see PayloadBlock).
 */
class BlockBuilder {
  readonly block: PayloadBlock;
  /** Bytes in use. */
  len = 0;
  count = 0;
  /** False once a payload holds a newline (a .json file that is not JSON): no block then. */
  splittable = true;
  /** Bytes of the payloads added (newlines and carriage returns not counted). */
  payloadBytes = 0;
  /** True once a message was left out for batch_max_bytes: the batch takes nothing more. */
  full = false;

  constructor(
    data: Buffer,
    maxMessages: number,
    /** The payload bytes the chunk holds at most, bar its first message unless `strict`. */
    private readonly maxBytes: number,
    private readonly strict: boolean,
  ) {
    this.block = { data, starts: new Uint32Array(maxMessages), ends: new Uint32Array(maxMessages) };
  }

  /**
   * Whether a payload of `bytes` may join the chunk: the first always does (unless `strict`), a
   * later one while the chunk stays within maxBytes. When it may not, the chunk is full from then on.
   */
  fits(bytes: number): boolean {
    if ((this.count > 0 || this.strict) && this.payloadBytes + bytes > this.maxBytes) this.full = true;
    return !this.full;
  }

  reserve(bytes: number): void {
    const need = this.len + bytes;
    if (need <= this.block.data.length) return;
    const grown = Buffer.allocUnsafe(Math.max(need, this.block.data.length * 2));
    this.block.data.copy(grown, 0, 0, this.len);
    this.block.data = grown;
  }

  add(start: number, end: number): number {
    this.block.starts[this.count] = start;
    this.block.ends[this.count] = end;
    this.payloadBytes += end - start;
    return this.count++;
  }

  /** Appends a payload given as text, followed by a newline. */
  addText(text: string): number {
    this.reserve(Buffer.byteLength(text) + 1);
    const start = this.len;
    this.len += this.block.data.write(text, start);
    const nl = this.block.data.indexOf(10, start);
    if (nl !== -1 && nl < this.len) this.splittable = false;
    this.block.data[this.len++] = 10;
    return this.add(start, this.len - 1);
  }

  finish(): PayloadBlock | undefined {
    const b = this.block;
    b.starts = b.starts.subarray(0, this.count);
    b.ends = b.ends.subarray(0, this.count);
    b.data = b.data.subarray(0, this.count ? b.ends[this.count - 1] : 0);
    return this.splittable && this.count > 0 ? b : undefined;
  }
}

export { fileSourceSchema, type FileSourceConfig } from './file-config.js';

interface FilePos {
  offset: number;
  line: number;
}
export interface FilePosition {
  files: Record<string, FilePos>;
  ordinal: number;
}

const DATA_EXT = /\.(ndjson|jsonl|json|txt)$/i;
// Bytes read past a full batch are read again for the next one: keep chunks small.
const READ_CHUNK = 1024 * 1024;

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
  /** Bytes the last batch took, to size the next one's buffer. */
  private lastBatchBytes = READ_CHUNK;
  /**
   * Buffers of acked batches, for the next batches to read into: fresh memory costs a page
   * fault per 4 KiB on first touch, which is more than reading the file.
   */
  private spare: Buffer[] = [];

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
    // fast-glob loads only for a path that may be a glob: most projects read a file or a directory.
    const fg = /[*?[\]{}()!]/.test(this.cfg.path) ? (await import('fast-glob')).default : undefined;
    if (fg?.isDynamicPattern(this.cfg.path)) {
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
        files = (await fsp.readdir(p, { withFileTypes: true })).filter((d) => d.isFile() && DATA_EXT.test(d.name) && !d.name.startsWith('.')).map((d) => path.join(p, d.name));
      } else files = [p];
    }
    return files.sort();
  }

  private key(file: string): string {
    return path.relative(this.ctx.projectDir, file) || file;
  }

  async poll(limits: PollLimits, signal: AbortSignal): Promise<SourceChunk | null> {
    const max = limits.maxMessages;
    const messages: RawMessage[] = [];
    const want = Math.ceil(Math.min(this.lastBatchBytes, limits.maxBytes) * 1.25) + READ_CHUNK;
    const reused = this.spare.pop();
    const bytes = new BlockBuilder(reused && reused.length >= want ? reused : Buffer.allocUnsafe(want), max, limits.maxBytes, limits.strict);
    const startOrdinal = this.pos.ordinal;
    for (;;) {
      for (const file of await this.listFiles()) {
        // A full chunk (by count or bytes) reads no further file: files are read in name order.
        if (messages.length >= max || bytes.full) break;
        if (file.toLowerCase().endsWith('.json')) await this.readJsonFile(file, max - messages.length, messages, bytes);
        else await this.readNdjson(file, max - messages.length, messages, bytes);
      }
      if (messages.length > 0 || bytes.full) break;
      if (!this.cfg.follow) return null;
      if (signal.aborted) break;
      // Following: nothing new yet, look again after poll_interval_ms.
      await sleep(this.cfg.poll_interval_ms, signal);
    }
    const block = bytes.finish();
    this.lastBatchBytes = Math.max(READ_CHUNK, bytes.len);
    return {
      messages,
      ...(block ? { block } : {}),
      bytes: bytes.payloadBytes,
      full: bytes.full,
      position: structuredClone(this.pos),
      first: ordinalKey(startOrdinal),
      last: ordinalKey(this.pos.ordinal - 1),
      // The buffer goes back to the spares once the chunk is acked: nothing reads it after.
      ackToken: bytes.block.data.buffer,
    };
  }

  private async readNdjson(file: string, want: number, out: RawMessage[], bytes: BlockBuilder): Promise<number> {
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
    // The file's bytes from fp.offset on land at bytes.len on; `start` is where the next line begins.
    let start = bytes.len;
    try {
      let readAt = fp.offset;
      while (got < want && !bytes.full && readAt < st.size) {
        const len = Math.min(READ_CHUNK, st.size - readAt);
        bytes.reserve(len);
        const { bytesRead } = await fh.read(bytes.block.data, bytes.len, len, readAt);
        if (bytesRead === 0) break;
        readAt += bytesRead;
        bytes.len += bytesRead;
        const buf = bytes.block.data.subarray(0, bytes.len);
        const atEof = readAt >= st.size;
        while (got < want && start < buf.length) {
          let nl = buf.indexOf(10, start);
          let end: number;
          if (nl === -1) {
            // An unterminated last line is a message once the file is complete (not followed).
            if (!(atEof && !this.cfg.follow)) {
              // A line already too long for what the batch has room for (one carriage return
              // aside) is left for the next batch without reading the rest of it.
              bytes.fits(buf.length - start - 1);
              break;
            }
            nl = buf.length;
            end = buf.length;
          } else end = nl;
          if (end > start && buf[end - 1] === 13) end--;
          const message = end > start && !isBlank(buf, start, end);
          // Not taken: the position stays before the line, the next batch starts with it.
          if (message && !bytes.fits(end - start)) break;
          fp.line++;
          if (message) {
            out.push(new FileMessage(bytes.block, bytes.add(start, end), key, fp.line, fp.offset));
            this.pos.ordinal++;
            got++;
          }
          const next = Math.min(nl + 1, buf.length);
          fp.offset += next - start;
          start = next;
        }
      }
    } finally {
      // Bytes past the last line taken (a partial line, or more than the batch wanted) are
      // read again next time.
      bytes.len = start;
      await fh.close();
    }
    return got;
  }

  private async readJsonFile(file: string, want: number, out: RawMessage[], bytes: BlockBuilder): Promise<number> {
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
      if (!bytes.fits(Buffer.byteLength(items[fp.offset]))) break;
      out.push(new FileMessage(bytes.block, bytes.addText(items[fp.offset]), key, fp.offset, undefined));
      fp.offset++;
      fp.line = fp.offset;
      this.pos.ordinal++;
      got++;
    }
    return got;
  }

  async ack(chunk: SourceChunk): Promise<void> {
    // The position is committed with the WAL state; nothing to tell the files.
    if (chunk.ackToken instanceof ArrayBuffer && this.spare.length < 2) this.spare.push(Buffer.from(chunk.ackToken));
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
