import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { SluiceError } from '../errors.js';

/** Whether a run can do its work, and if not, why. */
export interface Readiness {
  ok: boolean;
  reasons: string[];
  /** Each pipeline's own readiness, when the process runs several (one per source). */
  sources?: Record<string, { state: string; ready: boolean; reasons: string[] }>;
}

export interface Health {
  ready(): Readiness;
}

/** The Prometheus text served at /metrics: a prom-client Registry, or several merged into one. */
export interface Exposition {
  readonly contentType: string;
  metrics(): Promise<string>;
}

/** A port that cannot be listened on, said as the user set it (`--port` or sluice.yml's server.port). */
function listenError(port: number, err: NodeJS.ErrnoException): Error {
  const what = err.code === 'EADDRINUSE' ? 'is in use (another process listens on it)' : err.code === 'EACCES' ? 'needs privileges this process does not have' : undefined;
  if (!what) return err;
  return new SluiceError('USAGE', `--port ${port} ${what}: the ops server (/healthz, /readyz, /metrics) cannot start; choose another port with --port or server.port in sluice.yml (0 = no server)`, {
    cause: err,
  });
}

/** /healthz (process alive), /readyz (sinks healthy, WAL replayed), /metrics (Prometheus). */
export async function startServer(port: number, metrics: Exposition, health: Health): Promise<{ port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (url === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (url === '/readyz') {
      const r = health.ready();
      const body = { ready: r.ok, reasons: r.reasons, ...(r.sources ? { sources: r.sources } : {}) };
      res.writeHead(r.ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(body) + '\n');
    } else if (url === '/metrics') {
      metrics.metrics().then(
        (text) => res.writeHead(200, { 'content-type': metrics.contentType }).end(text),
        (err: Error) => res.writeHead(500).end(err.message),
      );
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(listenError(port, err)));
    server.listen(port, '0.0.0.0', () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
