import type { DuckDBConnection } from '@duckdb/node-api';
import { SluiceError, errorMessage } from '../../errors.js';
import { maskText, registerSecret } from '../../util/secrets.js';
import { idPrefix, jsonRowBatches, rowId } from '../row-json.js';
import type { ConnectorContext, Sink, SinkWrite } from '../types.js';
import type { HttpSinkConfig } from './http-config.js';

/** The longest Retry-After honoured. */
const MAX_RETRY_AFTER_MS = 300_000;
/** Characters of a failed answer's body quoted in the error. */
const BODY_EXCERPT = 300;

/** One request's failure: whether another attempt may succeed, and how long the server asked to wait. */
class RequestFailure extends Error {
  constructor(
    message: string,
    readonly retryable: boolean,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

/**
 * Rows as batched HTTP requests of JSON (Node's built-in fetch). A flush goes out in requests of
 * `batch_rows` rows, in order, one at a time; each carries `Idempotency-Key:
 * <prefix>/<model>/<flush name>/<first row>-<last row>`, the same when the flush is replayed, so
 * a receiver can drop copies. Each request is sent once: its failure fails the write, which the
 * sink policy (retry, circuit, on_error) retries. Network errors, timeouts, 408, 429 and 5xx are
 * retryable (with the answer's Retry-After as the least wait); other 4xx answers are permanent.
 * At-least-once: requests of a flush that succeeded before a failure or crash are sent again
 * when the flush is retried by another process (within this process they are skipped).
 */
export class HttpSink implements Sink {
  readonly idempotent = false;
  private ok = true;
  private readonly closing = new AbortController();
  private readonly prefix: string;
  /** Rows of the last failed flush that the endpoint already accepted, so its retry skips them. */
  private progress?: { key: string; rows: number };
  /** The URL as errors and logs show it (credentials masked). */
  private readonly shownUrl: string;
  /** The URL requests go to: fetch refuses credentials in a URL, they travel as Basic auth. */
  private readonly url: string;
  private readonly basicAuth?: string;

  constructor(
    private readonly cfg: HttpSinkConfig,
    ctx: ConnectorContext,
  ) {
    this.prefix = idPrefix(cfg.id_prefix, ctx.projectDir);
    this.shownUrl = maskText(cfg.url);
    const u = new URL(cfg.url);
    if (u.username || u.password) {
      this.basicAuth = `Basic ${Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64')}`;
      registerSecret(this.basicAuth);
      u.username = '';
      u.password = '';
    }
    this.url = u.toString();
  }

  async connect(): Promise<void> {
    if (this.cfg.auth_token_env && process.env[this.cfg.auth_token_env] === undefined) {
      throw new SluiceError('CONFIG', `http sink: auth_token_env names ${this.cfg.auth_token_env}, which is not set in the environment`);
    }
  }

  private headers(): Record<string, string> {
    const h: Record<string, string> = {
      'content-type': this.cfg.format === 'ndjson' ? 'application/x-ndjson' : 'application/json',
      ...this.cfg.headers,
    };
    if (this.basicAuth) h.authorization = this.basicAuth;
    if (this.cfg.auth_token_env) {
      const token = process.env[this.cfg.auth_token_env] ?? '';
      registerSecret(token);
      h[this.cfg.auth_header] = this.cfg.auth_scheme ? `${this.cfg.auth_scheme} ${token}` : token;
    }
    return h;
  }

  async write(w: SinkWrite, db: DuckDBConnection): Promise<void> {
    const key = `${w.model}/${w.name}`;
    const skip = this.progress?.key === key ? this.progress.rows : 0;
    let done = skip;
    try {
      const headers = this.headers();
      for await (const batch of jsonRowBatches(w, db, [], this.cfg.batch_rows)) {
        const end = batch.first + batch.rows.length;
        if (end <= skip) continue;
        const rows = batch.rows.map((r) => r[0]!);
        const body = this.cfg.format === 'ndjson' ? `${rows.join('\n')}\n` : `[${rows.join(',')}]`;
        const id = headerSafe(`${rowId(this.prefix, w, batch.first)}-${end - 1}`);
        await this.request(body, { ...headers, 'idempotency-key': id }, `rows ${batch.first}-${end - 1} of ${key}`);
        done = end;
      }
      this.progress = undefined;
      this.ok = true;
    } catch (err) {
      this.ok = false;
      this.progress = { key, rows: done };
      throw classify(err);
    }
  }

  /** Sends one request; throws RequestFailure when it fails. */
  private async request(body: string, headers: Record<string, string>, what: string): Promise<void> {
    const signal = AbortSignal.any([AbortSignal.timeout(this.cfg.timeout_ms), this.closing.signal]);
    let res: Response;
    try {
      res = await fetch(this.url, { method: this.cfg.method, headers, body, signal });
    } catch (err) {
      const reason = err instanceof Error && err.name === 'TimeoutError' ? `no answer within ${this.cfg.timeout_ms} ms` : causeMessage(err);
      throw new RequestFailure(`${this.cfg.method} ${this.shownUrl} (${what}) failed: ${reason}`, true);
    }
    const text = await res.text().catch(() => '');
    if (res.ok) return;
    const status = res.status;
    const retryable = status === 408 || status === 429 || status >= 500;
    const excerpt = text.length > BODY_EXCERPT ? `${text.slice(0, BODY_EXCERPT)}…` : text;
    throw new RequestFailure(
      `${this.cfg.method} ${this.shownUrl} (${what}) answered ${status} ${res.statusText}${excerpt ? `: ${excerpt.replace(/\s+/g, ' ').trim()}` : ''}`,
      retryable,
      retryable ? retryAfterMs(res.headers.get('retry-after')) : undefined,
    );
  }

  healthy(): boolean {
    return this.ok;
  }

  async close(): Promise<void> {
    this.closing.abort();
  }
}

/**
 * The one place the sink decides what is retryable: everything (a failed request, reading the
 * rows) except an answer refusing the rows as they are (a 4xx other than 408 and 429), which is
 * permanent. The answer's Retry-After travels with the error as the least wait.
 */
function classify(err: unknown): SluiceError {
  if (err instanceof SluiceError) return err;
  const retryable = !(err instanceof RequestFailure) || err.retryable;
  const retryAfter = err instanceof RequestFailure ? err.retryAfterMs : undefined;
  return new SluiceError('SINK', `http sink: ${errorMessage(err)}`, { cause: err, retryable, permanent: !retryable, retryAfterMs: retryAfter });
}

/** Retry-After as milliseconds: delta-seconds or an HTTP date; undefined when absent or unreadable. */
export function retryAfterMs(v: string | null): number | undefined {
  if (!v) return undefined;
  const s = v.trim();
  const ms = /^\d+(\.\d+)?$/.test(s) ? Number(s) * 1000 : Date.parse(s) - Date.now();
  if (Number.isNaN(ms)) return undefined;
  return Math.min(MAX_RETRY_AFTER_MS, Math.max(0, ms));
}

/** fetch() wraps the socket error ("fetch failed"); the cause says what happened. */
function causeMessage(err: unknown): string {
  const cause = err instanceof Error ? (err.cause as { code?: string; message?: string } | undefined) : undefined;
  return cause?.code ? `${errorMessage(err)} (${cause.code})` : cause?.message ? `${errorMessage(err)}: ${cause.message}` : errorMessage(err);
}

/** A header value of visible ASCII: anything else percent-encoded. */
function headerSafe(s: string): string {
  return s.replace(/[^\x21-\x7e]/g, (c) => encodeURIComponent(c));
}
