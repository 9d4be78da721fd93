import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../helpers/cli.js';
import { HttpReceiver, parseBody } from '../helpers/http-receiver.js';
import { dlqRecords, scenarioTargets, writeSinks } from '../helpers/service-sink.js';
import { addInput, contractProject, plainRows, runOnce, sinkContract, type SinkTarget, type SinkUnderTest } from '../helpers/sink-contract.js';

// The http sink against a real HTTP server started here (node:http on 127.0.0.1): the contract
// suite, then retries by the sink policy (5xx, 429 with Retry-After), a permanent 400, auth and headers from the
// environment, ndjson, and the Idempotency-Key a receiver can dedupe by. Breaking it for real:
// the server answers 503 on the scenario's path. The server runs in its own process (the
// contract runs the CLI synchronously, which blocks this one).

const rx = new HttpReceiver();
beforeAll(() => rx.start());
afterAll(() => rx.stop());

const pathOf = (t: SinkTarget) => `/c/${t.id}`;

const httpSut: SinkUnderTest = {
  name: 'http',
  idempotent: false,
  largeRows: 50_000,
  config: (t) => ({ type: 'http', url: rx.url(pathOf(t)), batch_rows: 2000 }),
  readRows: (t) => rx.rows(pathOf(t)),
  breakIt: (t) => rx.on(pathOf(t), [], { status: 503, body: 'down for maintenance' }),
  fixIt: (t) => rx.on(pathOf(t), []),
};

sinkContract(httpSut);

const target = scenarioTargets('http');

describe('http sink', () => {
  it('5xx answers fail the flush, which the sink policy retries; the retried request keeps its Idempotency-Key; every row arrives once', async () => {
    const t = target();
    const p = `/retry/${t.id}`;
    await rx.on(p, [{ status: 500, body: 'try again' }, { status: 502 }]);
    await contractProject(httpSut, t);
    writeSinks(t, { type: 'http', url: rx.url(p), batch_rows: 100, retry: { max_attempts: 4, backoff_ms: 50, max_backoff_ms: 200 } });
    addInput(t, 'a.ndjson', plainRows(250));
    const r = runOnce(t);
    expect(r.code, r.stderr).toBe(0);
    const all = await rx.requests(p);
    expect(all.map((q) => q.status)).toEqual([500, 502, 200, 200, 200]);
    // The first request was sent three times with the same key (each retry skips no accepted
    // request: there was none); the keys name the rows.
    expect(new Set(all.slice(0, 3).map((q) => q.headers['idempotency-key'])).size).toBe(1);
    expect(all.slice(2).map((q) => String(q.headers['idempotency-key']).replace(/^.*\/(\d+-\d+)$/, '$1'))).toEqual(['0-99', '100-199', '200-249']);
    const ids = (await rx.rows(p)).map((row) => row.id);
    expect(ids).toEqual(plainRows(250).map((x) => x.id));
  }, 60_000);

  it('a flush replayed after a crash is sent again with the same Idempotency-Keys: a receiver deduping by key gets every row once', async () => {
    const t = target();
    const p = `/replay/${t.id}`;
    await contractProject(httpSut, t, { batchSize: 50 });
    writeSinks(t, { type: 'http', url: rx.url(p), batch_rows: 40 });
    addInput(t, 'a.ndjson', plainRows(130));
    const crashed = runOnce(t, { SLUICE_CRASH_AT: 'after-sink-write', SLUICE_CRASH_AFTER: '1' });
    expect(crashed.code).not.toBe(0);
    const first = await rx.accepted(p);
    const again = runOnce(t);
    expect(again.code, again.stderr).toBe(0);
    const all = await rx.accepted(p);
    const replayed = all.slice(first.length);
    expect(first.length).toBeGreaterThan(0);
    expect(replayed.map((q) => q.headers['idempotency-key'])).toEqual(first.map((q) => q.headers['idempotency-key']));
    expect(replayed.map((q) => q.body)).toEqual(first.map((q) => q.body));
    const byKey = new Map(all.map((q) => [q.headers['idempotency-key'], q]));
    expect([...byKey.values()].flatMap((q) => parseBody(q)).map((x) => x.id)).toEqual(plainRows(130).map((x) => x.id));
  }, 60_000);

  it('429 with Retry-After: the sink policy waits at least that long before the next attempt', async () => {
    const t = target();
    const p = `/slow/${t.id}`;
    await rx.on(p, [{ status: 429, headers: { 'retry-after': '2' }, body: 'slow down' }]);
    await contractProject(httpSut, t);
    writeSinks(t, { type: 'http', url: rx.url(p), retry: { max_attempts: 3, backoff_ms: 10, max_backoff_ms: 20 } });
    addInput(t, 'a.ndjson', plainRows(10));
    const r = runOnce(t);
    expect(r.code, r.stderr).toBe(0);
    const all = await rx.requests(p);
    expect(all.map((q) => q.status)).toEqual([429, 200]);
    // Backoff alone would have waited <= 20 ms.
    expect(all[1].at - all[0].at).toBeGreaterThanOrEqual(1900);
    expect(await rx.rows(p)).toHaveLength(10);
  }, 60_000);

  it('a 400 is permanent: not retried, and with on_error: dlq the rows go to the DLQ with the answer in the error', async () => {
    const t = target();
    const p = `/reject/${t.id}`;
    await rx.on(p, [], { status: 400, body: '{"error":"field amount must be an integer"}' });
    await contractProject(httpSut, t);
    writeSinks(t, { type: 'http', url: rx.url(p), on_error: 'dlq', retry: { max_attempts: 5, backoff_ms: 10, max_backoff_ms: 20 } });
    addInput(t, 'a.ndjson', plainRows(7));
    const r = runOnce(t);
    expect(r.code, r.stderr).toBe(0);
    // One request: neither the sink nor the engine retried a permanent error.
    expect(await rx.requests(p)).toHaveLength(1);
    const dead = dlqRecords(t);
    expect(dead).toHaveLength(7);
    for (const d of dead) {
      expect(d.stage).toBe('sink');
      expect(d.error).toContain('answered 400');
      expect(d.error).toContain('field amount must be an integer');
    }
    expect(dead.map((d) => (JSON.parse(d.payload) as { id: number }).id).sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6, 7]);
  }, 60_000);

  it('a 400 with on_error: fail stops the run with the answer in the message, and the rows stay in the WAL', async () => {
    const t = target();
    const p = `/fail/${t.id}`;
    await rx.on(p, [], { status: 422, body: 'unprocessable: schema mismatch' });
    await contractProject(httpSut, t);
    writeSinks(t, { type: 'http', url: rx.url(p), on_error: 'fail' });
    addInput(t, 'a.ndjson', plainRows(5));
    const r = runOnce(t);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('answered 422');
    expect(r.stderr).toContain('unprocessable: schema mismatch');
    await rx.on(p, []);
    const again = runOnce(t);
    expect(again.code, again.stderr).toBe(0);
    expect((await rx.rows(p)).map((x) => x.id)).toEqual([1, 2, 3, 4, 5]);
  }, 60_000);

  it('ndjson bodies, a bearer token and headers from the environment, lossless JSON values', async () => {
    const t = target();
    const p = `/nd/${t.id}`;
    await contractProject(httpSut, t, {
      sql: `SELECT incoming.id::BIGINT AS id, incoming.big::BIGINT AS big, incoming.price::DECIMAL(18,3) AS price,
        incoming.at::TIMESTAMPTZ AS at, incoming.name AS name FROM incoming\n`,
    });
    writeSinks(t, {
      type: 'http',
      url: rx.url(p),
      format: 'ndjson',
      batch_rows: 3,
      auth_token_env: 'H5_TEST_TOKEN',
      headers: { 'x-tenant': '${H5_TEST_TENANT}' },
    });
    addInput(
      t,
      'a.ndjson',
      [1, 2, 3, 4].map((i) => ({ id: i, big: '9007199254740993', price: '12345678901234.125', at: '2024-05-06T07:08:09.5+02:00', name: `n${i}` })),
    );
    const r = runOnce(t, { H5_TEST_TOKEN: 's3cr3t', H5_TEST_TENANT: 'acme' });
    expect(r.code, r.stderr).toBe(0);
    const got = await rx.accepted(p);
    expect(got).toHaveLength(2);
    for (const q of got) {
      expect(q.method).toBe('POST');
      expect(q.headers['content-type']).toBe('application/x-ndjson');
      expect(q.headers.authorization).toBe('Bearer s3cr3t');
      expect(q.headers['x-tenant']).toBe('acme');
      expect(q.headers['idempotency-key']).toMatch(/^proj\/events\/part-.+\/\d+-\d+$/);
    }
    const lines = got.flatMap((q) => q.body.split('\n').filter(Boolean));
    expect(lines).toHaveLength(4);
    // Digits past 2^53 and the decimal's scale are in the text; the instant is UTC ISO 8601.
    expect(lines[0]).toBe('{"id":1,"big":9007199254740993,"price":12345678901234.125,"at":"2024-05-06T05:08:09.500000Z","name":"n1"}');
    expect(parseBody(got[1]).map((x) => x.id)).toEqual([4]);
  }, 60_000);

  it('a request that times out is retried (same key); one refused connection after another exhausts the retries and fails the flush', async () => {
    const t = target();
    const p = `/late/${t.id}`;
    // The first answer comes far past the timeout, the retry's at once: a 2 s timeout leaves a
    // loaded machine room to answer the retry in time.
    await rx.on(p, [{ status: 200, delay_ms: 8000 }]);
    await contractProject(httpSut, t);
    writeSinks(t, { type: 'http', url: rx.url(p), timeout_ms: 2000, retry: { max_attempts: 3, backoff_ms: 50, max_backoff_ms: 100 } });
    addInput(t, 'a.ndjson', plainRows(3));
    const r = runOnce(t);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('no answer within 2000 ms');
    const all = await rx.requests(p);
    expect(all).toHaveLength(2);
    expect(all[0].headers['idempotency-key']).toBe(all[1].headers['idempotency-key']);
    // The late answer was not taken as a success, the retry's was: the rows arrived (twice: at least once).
    expect(all.map((q) => parseBody(q).length)).toEqual([3, 3]);

    const u = target();
    const port = await freePort();
    await contractProject(httpSut, u);
    writeSinks(u, { type: 'http', url: `http://127.0.0.1:${port}/x`, on_error: 'fail', retry: { max_attempts: 3, backoff_ms: 20, max_backoff_ms: 40 } });
    addInput(u, 'a.ndjson', plainRows(2));
    const refused = runOnce(u);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/\(3 attempts, on_error: fail\): http sink: .*ECONNREFUSED/);
  }, 60_000);

  it('credentials in the URL travel as Basic authentication and are masked in errors', async () => {
    const t = target();
    const p = `/basic/${t.id}`;
    await rx.on(p, [{ status: 503 }]);
    await contractProject(httpSut, t);
    writeSinks(t, { type: 'http', url: rx.url(p).replace('://', '://loader:p%40ss-w0rd@'), retry: { backoff_ms: 10, max_backoff_ms: 20 } });
    addInput(t, 'a.ndjson', plainRows(2));
    const r = runOnce(t);
    expect(r.code, r.stderr).toBe(0);
    const all = await rx.requests(p);
    expect(all.map((q) => q.status)).toEqual([503, 200]);
    for (const q of all) expect(q.headers.authorization).toBe(`Basic ${Buffer.from('loader:p@ss-w0rd').toString('base64')}`);
    // The failed write's log line names the URL without the password.
    expect(r.stderr).toContain('answered 503');
    expect(r.stderr).not.toContain('p%40ss-w0rd');
  }, 60_000);

  it('a missing token variable is a clear error at start', async () => {
    const t = target();
    await contractProject(httpSut, t);
    writeSinks(t, { type: 'http', url: rx.url('/never'), auth_token_env: 'H5_NOT_SET_ANYWHERE' });
    addInput(t, 'a.ndjson', plainRows(1));
    const r = runOnce(t);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('auth_token_env names H5_NOT_SET_ANYWHERE, which is not set in the environment');
  }, 60_000);
});
