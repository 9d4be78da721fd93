import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DuckDBInstance } from '@duckdb/node-api';
import { waitFor } from './wait.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLI = path.join(ROOT, 'bin', 'sluice.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI as a user would, synchronously. */
export function sluice(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeout?: number } = {}): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    cwd: opts.cwd ?? ROOT,
    env: { ...process.env, ...opts.env },
    encoding: 'utf8',
    timeout: opts.timeout ?? 60_000,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Starts the CLI in the background. */
export function sluiceBg(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): ChildProcess & { out: () => string; err: () => string } {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: opts.cwd ?? ROOT, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return Object.assign(child, { out: () => out, err: () => err });
}

/**
 * Runs the CLI to its end without blocking the event loop: spawnSync would stall every other
 * concurrent test of the file (their polling, their broker handshakes, which the broker then
 * times out, and the reading of their workers' output). A process killed by a signal has code -1.
 */
export async function sluiceAsync(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeout?: number } = {}): Promise<CliResult & { signal: NodeJS.Signals | null }> {
  const child = sluiceBg(args, opts);
  // 'exit' can come before the last of the child's output is read from its pipes (under load, a
  // short command's whole stdout): wait for 'close' too, which comes once they are drained.
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const exit = await waitExit(child, opts.timeout ?? 120_000);
  await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 10_000))]);
  return { code: exit.code ?? -1, signal: exit.signal, stdout: child.out(), stderr: child.err() };
}

export function waitExit(child: ChildProcess, timeoutMs = 60_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve, reject) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve({ code: child.exitCode, signal: child.signalCode });
    const timedOut = () => {
      const err = 'err' in child && typeof child.err === 'function' ? `; its stderr ends:\n${String(child.err()).slice(-2000)}` : '';
      reject(new Error(`timed out after ${timeoutMs} ms waiting for process ${child.pid} (${child.spawnargs.slice(1).join(' ')}) to exit${err}`));
    };
    const t = setTimeout(timedOut, timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(t);
      resolve({ code, signal });
    });
  });
}

/**
 * Starts `sluice run` with `args` again and again, SIGKILLing each at a random moment 0.4 to
 * 1.6 s after its start, until it was killed `kills` times (a run that ends by itself does not
 * count; `more`, when given, is called then to add input, so a fast machine that drains a finite
 * source between kills still gets its kills). Returns the number of kills.
 */
export async function killRepeatedly(args: string[], env: NodeJS.ProcessEnv, kills: number, more?: () => void | Promise<void>): Promise<number> {
  let done = 0;
  for (let i = 0; done < kills && i < kills * 3; i++) {
    const child = sluiceBg(args, { env });
    await new Promise((r) => setTimeout(r, 400 + Math.floor(Math.random() * 1200)));
    if (child.exitCode === null) {
      child.kill('SIGKILL');
      done++;
    }
    const exit = await waitExit(child);
    if (exit.signal === null) await more?.();
  }
  return done;
}

export function tempDir(prefix = 'sluice-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/**
 * A `sluice init --template minimal` project made once per test file (in a temp dir pushed onto
 * `dirs` for the file to remove) and returned for copying: contract cases that run concurrently
 * copy it rather than each run a synchronous init, which would stall their event loop.
 */
export function minimalScaffold(prefix: string, dirs: string[]): string {
  if (!scaffolds.has(prefix)) {
    const root = tempDir(prefix);
    dirs.push(root);
    const init = sluice(['init', 'proj', '--template', 'minimal'], { cwd: root });
    if (init.code !== 0) throw new Error(`sluice init failed: ${init.stderr}`);
    scaffolds.set(prefix, path.join(root, 'proj'));
  }
  return scaffolds.get(prefix)!;
}
const scaffolds = new Map<string, string>();

/** Writes a project from a map of relative path -> content. */
export function writeFiles(dir: string, files: Record<string, string>): void {
  for (const [rel, content] of Object.entries(files)) {
    const p = path.join(dir, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, content);
  }
}

/** Runs one query in a fresh in-memory DuckDB and returns JSON rows. */
export async function query(sql: string): Promise<Record<string, unknown>[]> {
  const db = await DuckDBInstance.create(':memory:');
  const conn = await db.connect();
  try {
    const r = await conn.runAndReadAll(sql);
    return r.getRowObjectsJson() as Record<string, unknown>[];
  } finally {
    conn.closeSync();
    db.closeSync();
  }
}

export function parquetFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(p);
    }
  };
  walk(dir);
  return out.sort();
}

export async function httpGet(url: string): Promise<{ status: number; body: string }> {
  const r = await fetch(url);
  return { status: r.status, body: await r.text() };
}

/**
 * Polls `fn` every `stepMs` until it returns a truthy value, and returns that. On timeout the
 * error says what was waited for: `what`, or else the condition's own source text.
 */
export async function until<T>(fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 20_000, stepMs = 100, what?: string): Promise<T> {
  return waitFor(what ?? `the condition ${fn.toString().replace(/\s+/g, ' ').slice(0, 300)}`, fn, { timeoutMs, stepMs });
}

/** The JSON lines of a `--log-json` run's stderr (its structured log events), in order; a line still being written is left out. */
export function jsonLogs(stderr: string): Record<string, unknown>[] {
  const lines = stderr.split('\n');
  lines.pop();
  return lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
}

/**
 * Waits until a `--log-json` run logs an event with these fields (`msg` and any others, compared
 * by value) and returns it; on timeout the error names the event and shows the run's last lines.
 */
export async function untilEvent(child: { err: () => string }, fields: Record<string, unknown>, timeoutMs = 30_000): Promise<Record<string, unknown>> {
  const matches = (e: Record<string, unknown>) => Object.entries(fields).every(([k, v]) => JSON.stringify(e[k]) === JSON.stringify(v));
  return waitFor(`the log event ${JSON.stringify(fields)}`, () => jsonLogs(child.err()).find(matches), { timeoutMs, stepMs: 50, describe: () => child.err().slice(-2000) });
}

/** A TCP port free on 127.0.0.1 right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** The processes under `pid` (children, grandchildren, ...) whose command is `comm`, from /proc. */
export function processesUnder(pid: number, comm: string): number[] {
  const parent = new Map<number, number>();
  for (const d of fs.readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      parent.set(Number(d), Number(fs.readFileSync(`/proc/${d}/stat`, 'utf8').split(') ')[1].split(' ')[1]));
    } catch {
      // gone meanwhile
    }
  }
  const under: number[] = [];
  const todo = [pid];
  while (todo.length) {
    const p = todo.pop()!;
    for (const [c, pp] of parent) {
      if (pp !== p) continue;
      under.push(c);
      todo.push(c);
    }
  }
  return under.filter((p) => {
    try {
      return fs.readFileSync(`/proc/${p}/comm`, 'utf8').trim() === comm;
    } catch {
      return false;
    }
  });
}
