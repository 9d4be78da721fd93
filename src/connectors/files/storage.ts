import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { fsyncDir, fsyncFile, isTempName } from '../../util/fs-durable.js';

/** An object stored under a relative name, as listed for dedupe key files. */
export interface StoredEntry {
  name: string;
  mtimeMs: number;
}

/**
 * Where a file sink publishes what DuckDB produced locally. Names are relative to the sink's
 * root (`<model>/<flush>.parquet`, `<model>/<flush>/key=value/data_0.parquet`) and the same
 * on every backend, so a replay of a flush publishes under the same names.
 */
export interface FileStorage {
  /** For messages: the directory or s3:// URL. */
  readonly where: string;
  /** Prepares the root (creates it, checks the bucket) and removes leftovers of crashed writes. */
  connect(): Promise<void>;
  /** A local path, not yet existing, where DuckDB may produce `rel` (a file, or a directory when `tree`). */
  scratch(rel: string, tree: boolean): Promise<string>;
  /** Publishes the file `local` as `rel`: readers see the whole file or none; replaces `rel`. */
  commitFile(local: string, rel: string): Promise<void>;
  /**
   * Publishes the files under `local` as `rel/<their relative path>`. Readers never see a
   * partial file; whether they may see some files of the tree before others is the backend's
   * to document. A tree already published under `rel` (a replay) is left as it is or replaced.
   */
  commitTree(local: string, rel: string): Promise<void>;
  /** Files directly under `relDir` (none when it does not exist). */
  list(relDir: string): Promise<StoredEntry[]>;
  /** A local path DuckDB can read with the content of `rel`. */
  readable(rel: string): Promise<string>;
  remove(rel: string): Promise<void>;
  close(): Promise<void>;
}

const STAGING_DIR = '.staging';

/**
 * Local disk. A file is produced as a dot-temp next to its final name, fsynced and renamed; a
 * tree is produced in <root>/.staging/<worker>/ (outside <root>/<model>/, so a reader globbing
 * that never sees a partial flush), fsynced and committed with one directory rename.
 */
export class LocalStorage implements FileStorage {
  readonly where: string;

  constructor(
    readonly root: string,
    private readonly workerId: string,
    private readonly log: Logger,
  ) {
    this.where = root;
  }

  async connect(): Promise<void> {
    await fsp.mkdir(this.root, { recursive: true });
    // Only this worker's staging: other workers may share the output directory.
    await fsp.rm(this.stagingRoot(), { recursive: true, force: true });
    for (const m of await readdirOrEmpty(this.root)) {
      if (m.startsWith('.')) continue;
      const dir = path.join(this.root, m);
      for (const e of await readdirOrEmpty(dir)) {
        if (!isTempName(e)) continue;
        await fsp.rm(path.join(dir, e), { recursive: true, force: true });
        this.log.info({ file: path.join(dir, e) }, 'removed leftover of an interrupted write');
      }
    }
  }

  private stagingRoot(): string {
    return path.join(this.root, STAGING_DIR, this.workerId || 'worker');
  }

  async scratch(rel: string, tree: boolean): Promise<string> {
    const final = path.join(this.root, rel);
    if (!tree) {
      await fsp.mkdir(path.dirname(final), { recursive: true });
      return path.join(path.dirname(final), `.${path.basename(final)}.tmp`);
    }
    await fsp.mkdir(this.stagingRoot(), { recursive: true });
    return path.join(this.stagingRoot(), `${rel.replaceAll('/', '-')}-${process.pid}-${Date.now().toString(36)}`);
  }

  async commitFile(local: string, rel: string): Promise<void> {
    const final = path.join(this.root, rel);
    await fsyncFile(local);
    await fsp.rename(local, final);
    await fsyncDir(path.dirname(final));
  }

  async commitTree(local: string, rel: string): Promise<void> {
    const final = path.join(this.root, rel);
    await fsp.mkdir(path.dirname(final), { recursive: true });
    await fsyncTree(local);
    try {
      await fsp.rename(local, final);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
      // A replay of a flush that already committed: the rows are the same, keep the committed copy.
      await fsp.rm(local, { recursive: true, force: true });
    }
    await fsyncDir(path.dirname(final));
  }

  async list(relDir: string): Promise<StoredEntry[]> {
    const dir = path.join(this.root, relDir);
    const out: StoredEntry[] = [];
    for (const name of await readdirOrEmpty(dir)) {
      const st = await fsp.stat(path.join(dir, name)).catch(() => undefined);
      if (st?.isFile()) out.push({ name, mtimeMs: st.mtimeMs });
    }
    return out;
  }

  async readable(rel: string): Promise<string> {
    return path.join(this.root, rel);
  }

  async remove(rel: string): Promise<void> {
    await fsp.rm(path.join(this.root, rel), { recursive: true, force: true });
  }

  async close(): Promise<void> {}
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await fsp.readdir(dir);
  } catch {
    return [];
  }
}

/** Every file under `dir`, as paths relative to it. */
export async function filesUnder(dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await filesUnder(dir, rel)));
    else out.push(rel);
  }
  return out.sort();
}

async function fsyncTree(dir: string): Promise<void> {
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await fsyncTree(p);
    else await fsyncFile(p);
  }
  await fsyncDir(dir);
}
