import fs from 'node:fs';
import { z } from 'zod';
import { tlsSchema } from '../rabbitmq/rabbitmq-config.js';

/** Connection keys of the SQL-table sinks: a URL, or host/port/user/password/database. */
export function connectionKeys(defaults: { port: number; user: string }) {
  return {
    url: z.string().min(1).optional().describe('connection URL (postgres://user:pass@host:port/db, mysql://...); overrides the separate keys'),
    host: z.string().min(1).default('127.0.0.1'),
    port: z.number().int().min(1).max(65535).default(defaults.port),
    user: z.string().min(1).default(defaults.user),
    password: z.string().optional().describe('use ${VAR} to take it from the environment'),
    database: z.string().min(1).optional().describe('database name'),
    tls: tlsSchema.optional().describe('TLS to the server (the same block as every connector)'),
  };
}

/** The `ssl` option both node clients (pg, mysql2) take. */
export function sslOptions(tls: z.output<typeof tlsSchema> | undefined): { ca?: Buffer; cert?: Buffer; key?: Buffer; rejectUnauthorized: boolean } | undefined {
  if (!tls?.enabled) return undefined;
  return {
    ...(tls.ca ? { ca: fs.readFileSync(tls.ca) } : {}),
    ...(tls.cert ? { cert: fs.readFileSync(tls.cert) } : {}),
    ...(tls.key ? { key: fs.readFileSync(tls.key) } : {}),
    rejectUnauthorized: tls.reject_unauthorized,
  };
}

/** `host:port/database` of a connection config, for messages (never the password). */
export function endpoint(cfg: { url?: string; host: string; port: number; database?: string }, defaultPort: number): string {
  if (cfg.url) {
    try {
      const u = new URL(cfg.url);
      return `${u.hostname}:${u.port || defaultPort}${u.pathname}`;
    } catch {
      return 'the configured url';
    }
  }
  return `${cfg.host}:${cfg.port}${cfg.database ? `/${cfg.database}` : ''}`;
}
