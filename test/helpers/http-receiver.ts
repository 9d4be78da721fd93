import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** One request as the receiver got it. */
export interface Received {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: string;
  /** The answer it gave. */
  status: number;
  /** When it arrived (ms since the epoch). */
  at: number;
}

/** An answer of the receiver. */
export interface Answer {
  status: number;
  headers?: Record<string, string>;
  body?: string;
  /** Answer only after this long. */
  delay_ms?: number;
}

/**
 * A real HTTP server on 127.0.0.1 (random port) in a child process (http-receiver-server.mjs),
 * the counterpart of the http sink in tests. It records every request per path and answers as
 * told (200 by default).
 */
export class HttpReceiver {
  private child?: ChildProcess;
  port = 0;

  async start(): Promise<void> {
    const script = path.join(path.dirname(fileURLToPath(import.meta.url)), 'http-receiver-server.mjs');
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
    this.child = child;
    this.port = await new Promise<number>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const line = out.split('\n')[0];
        if (out.includes('\n')) resolve((JSON.parse(line) as { port: number }).port);
      });
      child.once('exit', (code) => reject(new Error(`the HTTP receiver exited (${code})`)));
    });
  }

  /**
   * A control request on a fresh connection: this process blocks in spawnSync while the CLI
   * runs, so a kept-alive socket may have been closed by the server without it noticing.
   */
  private control(p: string, init: RequestInit = {}): Promise<Response> {
    return fetch(this.url(p), { ...init, headers: { connection: 'close' } });
  }

  url(p: string): string {
    return `http://127.0.0.1:${this.port}${p}`;
  }

  /** Request n on `p` gets script[n-1] (counting from this call), later ones `otherwise` (default 200). */
  async on(p: string, script: Answer[], otherwise: Answer = { status: 200 }): Promise<void> {
    const r = await this.control('/_ctl/behaviour', { method: 'POST', body: JSON.stringify({ path: p, script, otherwise }) });
    if (r.status !== 204) throw new Error(`receiver: ${r.status}`);
  }

  /** Every request to `p` so far, in arrival order. */
  async requests(p: string): Promise<Received[]> {
    const r = await this.control(`/_ctl/requests?path=${encodeURIComponent(p)}`);
    return (await r.json()) as Received[];
  }

  /** Requests to `p` that were answered 2xx. */
  async accepted(p: string): Promise<Received[]> {
    return (await this.requests(p)).filter((r) => r.status >= 200 && r.status < 300);
  }

  /** Rows of the accepted requests to `p`, in arrival order (JSON array or NDJSON bodies). */
  async rows(p: string): Promise<Record<string, unknown>[]> {
    return (await this.accepted(p)).flatMap((r) => parseBody(r));
  }

  async stop(): Promise<void> {
    this.child?.kill('SIGTERM');
  }
}

export function parseBody(r: Received): Record<string, unknown>[] {
  if (r.headers['content-type'] === 'application/x-ndjson') {
    return r.body
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }
  return JSON.parse(r.body) as Record<string, unknown>[];
}
