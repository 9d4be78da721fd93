import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';
import { MASK, REDACT_PATHS, maskText } from '../util/secrets.js';

export type { Logger };

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const SKIP = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'name']);

/** Human-readable lines on stderr: `12:00:01 INFO  message key=value ...`. */
function prettyStream(): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        try {
          const o = JSON.parse(line) as Record<string, unknown>;
          const t = new Date(Number(o.time)).toISOString().slice(11, 19);
          const lvl = (LEVELS[Number(o.level)] ?? String(o.level)).padEnd(5);
          const extra = Object.entries(o)
            .filter(([k]) => !SKIP.has(k))
            .map(([k, v]) => {
              if (k === 'err' && v && typeof v === 'object') {
                const e = v as { message?: string; stack?: string };
                return Number(o.level) <= 20 && e.stack ? `\n${e.stack}` : `err=${JSON.stringify(e.message)}`;
              }
              return `${k}=${typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v)}`;
            })
            .join(' ');
          process.stderr.write(`${t} ${lvl} ${String(o.msg ?? '')}${extra ? ' ' + extra : ''}\n`);
        } catch {
          process.stderr.write(line + '\n');
        }
      }
      cb();
    },
  });
}

export function createLogger(opts: { json?: boolean; level?: string } = {}): Logger {
  const level = (opts.level ?? 'info').toLowerCase();
  const base = {
    level,
    base: undefined,
    // Secrets never reach a log line: secret-named keys are redacted, and every line has URL
    // passwords and the known secret values (config and ${VAR}s with secret names) masked.
    redact: { paths: REDACT_PATHS, censor: MASK },
    hooks: { streamWrite: (s: string) => maskText(s) },
    serializers: {
      err: (e: unknown) => {
        const err = e as Error;
        // The stack only at debug level: users see one clear line.
        return level === 'debug' || level === 'trace' ? { message: err?.message, stack: err?.stack } : { message: err?.message ?? String(e) };
      },
    },
  };
  if (opts.json) return pino(base, pino.destination({ dest: 2, sync: true }));
  return pino(base, prettyStream());
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
