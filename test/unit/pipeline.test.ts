import fs from 'node:fs';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SourceChunk } from '../../src/connectors/types.js';
import { fileList } from '../../src/sql/quote.js';
import { ManualClock } from '../helpers/clock.js';
import { projectDeadLetters } from '../helpers/dlq.js';
import { FakeSink } from '../helpers/fake-sink.js';
import { FakeSource } from '../helpers/fake-source.js';
import { msg, row, runInProcess, sourceYaml, testProject, type RunningPipeline } from '../helpers/pipeline.js';
import { readWalState } from '../helpers/wal.js';
import { waitFor } from '../helpers/wait.js';

// The engine's run loop in process: a real project on a temp dir (DuckDB, the WAL, the DLQ), a
// FakeSource the test pushes messages into, a FakeSink that keeps what it is given, and, where
// time is the subject (flush age, backoff, the circuit, batch timeouts), a clock the test moves.
// Waits are on conditions (rows at the sink, acks, metrics, structured log events), never sleeps.

const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);
/** Message keys as a position-keyed source has them: sortable, safe in file names. */
const ordinalKey = (_payload: string, ordinal: number): string => String(ordinal).padStart(8, '0');
const walSegments = (walDir: string, model: string): string[] => fs.readdirSync(path.join(walDir, 'models', model)).filter((f) => f.endsWith('.parquet'));

/**
 * Moves `clock` on `stepMs` at a time until `done()`; after each step, waits for the run to react
 * (`turn()` grows: the loop polled the source again, or tried a sink again). The loop polls for
 * the next batch before it flushes, so a flush may see the clock one step later than the turn
 * that started it: times observed at the sink are exact lower bounds, and at most a step late.
 */
async function stepUntil(clock: ManualClock, what: string, done: () => boolean | Promise<boolean>, turn: () => number, stepMs: number, maxSteps = 5000): Promise<void> {
  for (let i = 0; !(await done()); i++) {
    if (i >= maxSteps) throw new Error(`still waiting for ${what} after ${i} steps of ${stepMs} ms on the clock`);
    const before = turn();
    clock.advance(stepMs);
    // Usually the run reacts to each step; a step that only wakes a wait whose own deadline is
    // not due yet (a backoff measured from a later attempt) gets no reaction: then step again.
    await waitFor(`the run to react to the clock moving to +${i + 1} steps (waiting for ${what})`, () => turn() > before, { stepMs: 1, timeoutMs: 2_000 }).catch(() => {});
  }
}

describe('pipeline: delivery', () => {
  it("each message's rows reach the sink exactly once, in order; chunks are acked in order; the WAL ends empty", async () => {
    const { project } = testProject({ 'config/sources.yml': sourceYaml({ batch_size: 100 }) });
    const source = new FakeSource({ key: ordinalKey });
    const sink = new FakeSink();
    const ids = range(1, 250);
    source.push(...ids.map(msg));
    source.end();
    const summary = await runInProcess({ project, source, sinks: { default: sink } }).result;
    expect(summary).toMatchObject({ messages: 250, deadLettered: 0, rows: { events: 250 }, batches: 3 });
    expect(sink.rows('events')).toEqual(ids.map(row));
    expect(source.ackedPayloads).toEqual(ids.map(msg));
    // Each flush written once, under its own name (named after the source positions it holds).
    expect(sink.attempts.every((a) => a.ok)).toBe(true);
    expect([...sink.flushes.keys()]).toEqual(['events/part-00000001-00000100', 'events/part-00000101-00000200', 'events/part-00000201-00000250']);
    expect(sink.attempts).toHaveLength(3);
    expect(walSegments(project.walPath, 'events')).toEqual([]);
    expect([source.closed, sink.connects, sink.closes]).toEqual([true, 1, 1]);
  });

  describe('acks', () => {
    let db: DuckDBInstance;
    beforeAll(async () => {
      db = await DuckDBInstance.create(':memory:');
    });
    afterAll(() => db.closeSync());

    it('a chunk is acked only once the WAL has committed its batch: position and rows durable', async () => {
      const { project } = testProject({ 'config/sources.yml': sourceYaml({ batch_size: 100 }) });
      const conn = await db.connect();
      const checks: { chunk: number; committed: number; missing: number[] }[] = [];
      const onAck = async (chunk: SourceChunk): Promise<void> => {
        // What a crash now would leave: state.json and the committed segments on disk.
        const state = readWalState(project.walPath);
        const dir = path.join(project.walPath, 'models', 'events');
        const committed = walSegments(project.walPath, 'events').filter((f) => Number(f.slice(0, 12)) <= state.seq);
        const inWal = new Set<number>();
        if (committed.length) {
          const r = await conn.runAndReadAll(`SELECT id FROM read_parquet(${fileList(committed.map((f) => path.join(dir, f)))})`);
          for (const [id] of r.getRows()) inWal.add(Number(id));
        }
        const ids = chunk.messages.map((m) => (JSON.parse(m.payload) as { id: number }).id);
        checks.push({ chunk: (chunk.position as { chunk: number }).chunk, committed: (state.position as { chunk: number }).chunk, missing: ids.filter((id) => !inWal.has(id)) });
      };
      // A source that hands over 30 at a time: batches formed while the engine is busy take several chunks.
      const source = new FakeSource({ key: ordinalKey, maxPerPoll: 30, onAck });
      const sink = new FakeSink();
      source.push(...range(1, 200).map(msg));
      source.end();
      const summary = await runInProcess({ project, source, sinks: { default: sink } }).result;
      conn.closeSync();
      expect(summary.messages).toBe(200);
      expect(checks.map((c) => c.chunk)).toEqual(range(1, checks.length));
      for (const c of checks) {
        expect(c.committed, `chunk ${c.chunk} acked before the WAL committed its position`).toBeGreaterThanOrEqual(c.chunk);
        expect(c.missing, `chunk ${c.chunk} acked while rows of its messages were not committed in the WAL`).toEqual([]);
      }
      // Batches of several chunks were among them (the commit holds the last chunk's position).
      expect(checks.some((c) => c.committed > c.chunk)).toBe(true);
      expect(sink.rows('events')).toEqual(range(1, 200).map(row));
    });
  });

  it('a failing sink keeps the WAL and is retried; messages are acked meanwhile, the other model is delivered, and nothing is duplicated', async () => {
    const clock = new ManualClock(Date.now());
    const { project } = testProject({
      'config/sources.yml': sourceYaml({ batch_size: 10, batch_timeout_ms: 50 }),
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: out\n  retry: { backoff_ms: 100, max_backoff_ms: 400 }\n  circuit: { failures: 1000 }\n',
      'models/ids.sql': 'SELECT incoming.id::BIGINT AS id FROM incoming\n',
    });
    const source = new FakeSource({ key: ordinalKey });
    const sink = new FakeSink(clock);
    sink.break('events');
    const run = runInProcess({ project, source, sinks: { default: sink }, clock });
    source.push(...range(1, 30).map(msg));
    await waitFor('30 messages acked while the sink fails', () => source.ackedPayloads.length === 30, { describe: () => source.acked });
    await waitFor('the other model delivered', () => sink.rows('ids').length === 30, { describe: () => sink.attempts });
    expect(sink.rows('events')).toEqual([]);
    expect(sink.failures).toBeGreaterThanOrEqual(1);
    expect(walSegments(project.walPath, 'events').length).toBeGreaterThan(0);
    expect(run.pipeline.ready().reasons).toContainEqual(expect.stringMatching(/^flush of events failing: sink default: fake sink: the target is down/));
    expect(await run.metric('sluice_flushes_total', { model: 'events', result: 'error' })).toBeGreaterThanOrEqual(1);

    sink.repair();
    await stepUntil(
      clock,
      'the rows of events at the sink',
      () => sink.rows('events').length >= 30,
      () => source.polls.length,
      50,
    );
    expect(sink.rows('events')).toEqual(range(1, 30).map(row));
    expect(sink.rows('ids')).toEqual(range(1, 30).map((n) => ({ id: String(n) })));
    expect(run.pipeline.ready()).toEqual({ ok: true, reasons: [] });
    expect(walSegments(project.walPath, 'events')).toEqual([]);
    const summary = await run.stop();
    expect(summary).toMatchObject({ messages: 30, rows: { events: 30, ids: 30 } });
  });

  it('a crash between the WAL commit and the flush: the next run delivers the WAL before it reads anything', async () => {
    const files = { 'config/sources.yml': sourceYaml({ batch_size: 10 }), 'config/models.yml': 'max_age_seconds: 3600\n' };
    const first = testProject(files);
    const second = testProject(files);
    // At the ack of the second batch (committed, not flushed: flushes wait an hour), the WAL
    // directory is copied as it is on disk: what a SIGKILL there would leave behind.
    const onAck = (chunk: SourceChunk) => {
      if ((chunk.position as { chunk: number }).chunk === 2) fs.cpSync(first.project.walPath, second.project.walPath, { recursive: true });
    };
    const source = new FakeSource({ key: ordinalKey, maxPerPoll: 10, onAck });
    source.push(...range(1, 30).map(msg));
    source.end();
    await runInProcess({ project: first.project, source, sinks: { default: new FakeSink() } }).result;

    const again = new FakeSource({ key: ordinalKey });
    again.end();
    const sink = new FakeSink();
    const pollsAtWrites: number[] = [];
    sink.onWrite = () => pollsAtWrites.push(again.polls.length);
    const run = runInProcess({ project: second.project, source: again, sinks: { default: sink } });
    const summary = await run.result;
    expect(sink.rows('events')).toEqual(range(1, 20).map(row));
    expect(pollsAtWrites).toEqual([0]);
    expect(again.opened).toEqual([{ chunk: 2 }]);
    expect(summary).toMatchObject({ messages: 0, flushes: 1 });
    expect(run.events.find((e) => e.msg === 'replaying WAL from a previous run')).toMatchObject({ models: 1 });
    expect(walSegments(second.project.walPath, 'events')).toEqual([]);
  });

  it('a message that fails to decode or to transform goes to the DLQ alone; the others are delivered; all are acked', async () => {
    const { dir, project } = testProject({ 'models/events.sql': 'SELECT incoming.id::BIGINT AS id, CAST(incoming.code AS INTEGER) AS code FROM incoming\n' });
    const source = new FakeSource({ key: ordinalKey });
    const sink = new FakeSink();
    const coded = (id: number, code: string) => JSON.stringify({ id, code });
    source.push(coded(1, '10'), '{"id": 2, "code": ', coded(3, 'x3'), coded(4, '40'));
    source.end();
    const run = runInProcess({ project, source, sinks: { default: sink } });
    const summary = await run.result;
    expect(summary).toMatchObject({ messages: 4, deadLettered: 2, rows: { events: 2 } });
    expect(sink.rows('events')).toEqual([
      { id: '1', code: 10 },
      { id: '4', code: 40 },
    ]);
    expect(source.ackedPayloads).toHaveLength(4);
    const dead = projectDeadLetters(dir);
    expect(dead.map((d) => [d.stage, d.source, d.model ?? null, d.payload])).toEqual([
      ['decode', { ordinal: 2 }, null, '{"id": 2, "code": '],
      ['transform', { ordinal: 3 }, 'events', coded(3, 'x3')],
    ]);
    expect(dead[1].error).toMatch(/Could not convert string 'x3' to INT32/);
    expect(await run.metric('sluice_dead_lettered_total', { stage: 'decode' })).toBe(1);
    expect(await run.metric('sluice_dead_lettered_total', { stage: 'transform' })).toBe(1);
    expect(run.events.filter((e) => e.msg === 'message sent to the DLQ').map((e) => e.stage)).toEqual(['decode', 'transform']);
  });

  it('a stop finishes the batch already read, delivers everything staged, and leaves unread messages in the source', async () => {
    const { project } = testProject({ 'config/sources.yml': sourceYaml({ batch_size: 5 }), 'config/models.yml': 'max_age_seconds: 3600\n' });
    let run: RunningPipeline | undefined;
    // The stop comes as the second batch is read (while the first is being committed).
    const source = new FakeSource({ key: ordinalKey, onPoll: (c) => void (c.messages.some((m) => m.payload === msg(6)) && run!.stop()) });
    const sink = new FakeSink();
    source.push(...range(1, 15).map(msg));
    run = runInProcess({ project, source, sinks: { default: sink } });
    const summary = await run.result;
    expect(summary).toMatchObject({ messages: 10, batches: 2 });
    expect(source.ackedPayloads).toEqual(range(1, 10).map(msg));
    expect(sink.rows('events')).toEqual(range(1, 10).map(row));
    expect(source.holding).toBe(5);
    expect(source.closed).toBe(true);
    expect(walSegments(project.walPath, 'events')).toEqual([]);
    expect(run.events.some((e) => e.msg === 'end of input')).toBe(false);
  });
});

describe('pipeline: adaptive batching', () => {
  const batchSizes = (run: RunningPipeline): number[] => run.events.filter((e) => e.msg === 'batch committed').map((e) => e.messages as number);

  it('under a backlog, batches fill up to batch_size (over several polls of a source that hands over 50 at a time)', async () => {
    const { project } = testProject({ 'config/sources.yml': sourceYaml({ batch_size: 200, batch_timeout_ms: 60_000 }) });
    const source = new FakeSource({ key: ordinalKey, maxPerPoll: 50 });
    const sink = new FakeSink();
    source.push(...range(1, 2000).map(msg));
    source.end();
    const run = runInProcess({ project, source, sinks: { default: sink }, clock: new ManualClock(Date.now()) });
    await run.result;
    const sizes = batchSizes(run);
    // The first batch goes as soon as it holds a message (the engine is waiting for it); the
    // next ones grow while the engine is busy, up to the ceiling.
    expect(sizes[0]).toBe(50);
    expect(sizes.slice(1, -1).every((n) => n === 200)).toBe(true);
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(2000);
    expect(sink.rows('events')).toEqual(range(1, 2000).map(row));
    // Each batch's debug line says how long that batch took to form and how long the loop waited for it.
    for (const e of run.events.filter((x) => x.msg === 'batch committed')) {
      const ms = e.ms as Record<string, unknown>;
      expect(Number.isInteger(ms.read) && (ms.read as number) >= 0, JSON.stringify(ms)).toBe(true);
      expect(Number.isInteger(ms.wait) && (ms.wait as number) >= 0, JSON.stringify(ms)).toBe(true);
    }
  });

  it('under trickle traffic, each message goes through at once in its own batch, without waiting for batch_timeout_ms', async () => {
    // The clock never moves: a batch that waited for its timeout would never come.
    const clock = new ManualClock(Date.now());
    const start = clock.now();
    const { project } = testProject({ 'config/sources.yml': sourceYaml({ batch_size: 1000, batch_timeout_ms: 60_000 }) });
    const source = new FakeSource({ key: ordinalKey });
    const sink = new FakeSink(clock);
    const run = runInProcess({ project, source, sinks: { default: sink }, clock });
    for (const n of range(1, 5)) {
      source.push(msg(n));
      await waitFor(`message ${n} at the sink`, () => sink.rows('events').length === n, { describe: () => ({ rows: sink.rows('events'), acked: source.acked }) });
    }
    expect(batchSizes(run)).toEqual([1, 1, 1, 1, 1]);
    expect(sink.rows('events')).toEqual(range(1, 5).map(row));
    expect(clock.now()).toBe(start);
    await run.stop();
  });
});

describe('pipeline: time on an injected clock', () => {
  it('flushes a model once its oldest WAL rows are max_age_seconds old, not before', async () => {
    const clock = new ManualClock(Date.now());
    const { project } = testProject({ 'config/sources.yml': sourceYaml({ batch_timeout_ms: 1000 }), 'config/models.yml': 'max_age_seconds: 60\n' });
    const source = new FakeSource({ key: ordinalKey });
    const sink = new FakeSink(clock);
    const run = runInProcess({ project, source, sinks: { default: sink }, clock });
    source.push(msg(1), msg(2), msg(3));
    await waitFor('3 messages acked', () => source.ackedPayloads.length === 3);
    const committedAt = clock.now();
    await stepUntil(
      clock,
      'the flush by age',
      () => sink.attempts.length > 0,
      () => source.polls.length,
      1000,
    );
    expect(sink.attempts).toEqual([expect.objectContaining({ ok: true, rows: 3 })]);
    const age = sink.attempts[0].at - committedAt;
    expect(age).toBeGreaterThanOrEqual(60_000);
    expect(age).toBeLessThanOrEqual(61_000);
    await run.stop();
    expect(sink.rows('events')).toEqual([row(1), row(2), row(3)]);
  });

  it('retries a failing write with exponential backoff up to max_backoff_ms, logs and counts each failure, and delivers once repaired', async () => {
    const clock = new ManualClock(Date.now());
    const { project } = testProject({
      'config/sources.yml': sourceYaml({ batch_timeout_ms: 50 }),
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: out\n  retry: { max_attempts: 1000, backoff_ms: 150, max_backoff_ms: 600 }\n  circuit: { failures: 1000 }\n',
    });
    const source = new FakeSource({ key: ordinalKey });
    const sink = new FakeSink(clock);
    sink.break();
    const run = runInProcess({ project, source, sinks: { default: sink }, clock });
    source.push(...range(1, 20).map(msg));
    await waitFor('the first failed write', () => sink.failures === 1);
    await stepUntil(
      clock,
      'six failed writes',
      () => sink.failures >= 6,
      () => source.polls.length,
      50,
    );
    // The waits between attempts, on the clock: the backoff, to within a step (50 ms).
    const at = sink.attempts.map((a) => a.at);
    for (const [i, t] of at.slice(1).entries()) {
      expect(t - at[i], `wait before attempt ${i + 2}`).toSatisfy((d: number) => d >= [150, 300, 600, 600, 600][i] && d <= [150, 300, 600, 600, 600][i] + 50);
    }
    const retries = run.events.filter((e) => e.msg === 'sink write failed; the WAL is kept and the write retried');
    expect(retries.map((e) => [e.sink, e.attempt, e.retry_in_ms])).toEqual([1, 2, 3, 4, 5, 6].map((n, i) => ['default', n, [150, 300, 600, 600, 600, 600][i]]));
    expect(await run.metric('sluice_sink_errors_total', { sink: 'default' })).toBe(6);
    expect(await run.metric('sluice_sink_retries_total', { sink: 'default' })).toBe(5);
    expect(await run.metric('sluice_sink_write_duration_seconds_count', { sink: 'default', result: 'error' })).toBe(6);
    expect(await run.metric('sluice_sink_rows_written_total', { sink: 'default' })).toBe(0);
    expect(run.pipeline.ready().reasons).toEqual(['sink default unhealthy', expect.stringMatching(/^flush of events failing: sink default: fake sink: the target is down/)]);

    sink.repair();
    await stepUntil(
      clock,
      'the rows at the sink',
      () => sink.rows('events').length > 0,
      () => source.polls.length,
      50,
    );
    expect(sink.attempts[6].ok).toBe(true);
    expect(sink.attempts[6].at - at[5]).toSatisfy((d: number) => d >= 600 && d <= 650);
    expect(sink.rows('events')).toEqual(range(1, 20).map(row));
    expect(await run.metric('sluice_sink_rows_written_total', { sink: 'default' })).toBe(20);
    expect(run.pipeline.ready()).toEqual({ ok: true, reasons: [] });
    await run.stop();
  });

  it('opens the circuit after N consecutive failures (not ready, no write during the cooldown), probes once, and closes on success', async () => {
    const clock = new ManualClock(Date.now());
    const { project } = testProject({
      'config/sources.yml': sourceYaml({ batch_timeout_ms: 100 }),
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: out\n  retry: { max_attempts: 1000, backoff_ms: 100, max_backoff_ms: 100 }\n  circuit: { failures: 3, cooldown_ms: 5000 }\n',
    });
    const source = new FakeSource({ key: ordinalKey });
    const sink = new FakeSink(clock);
    sink.break();
    const run = runInProcess({ project, source, sinks: { default: sink }, clock });
    const circuit = () => run.metric('sluice_sink_circuit_state', { sink: 'default' });
    const polls = () => source.polls.length;
    source.push(...range(1, 8).map(msg));
    await waitFor('the first failed write', () => sink.failures === 1);
    await stepUntil(clock, 'the circuit to open', async () => (await circuit()) === 1, polls, 100);
    expect(sink.failures).toBe(3);
    const opened = sink.attempts[2].at;
    expect(run.pipeline.ready().reasons).toContainEqual(expect.stringMatching(/^sink default circuit open after 3 consecutive failures: fake sink: the target is down/));
    // No write during the cooldown; then one probe, which fails: open again for another cooldown.
    await stepUntil(clock, 'the probe', () => sink.failures === 4, polls, 100);
    expect(sink.attempts[3].at - opened).toSatisfy((d: number) => d >= 5000 && d <= 5100);
    expect(await circuit()).toBe(1);
    sink.repair();
    await stepUntil(clock, 'the second probe', () => sink.attempts.length === 5, polls, 100);
    expect(sink.attempts[4].ok).toBe(true);
    expect(sink.attempts[4].at - sink.attempts[3].at).toSatisfy((d: number) => d >= 5000 && d <= 5100);
    expect(await circuit()).toBe(0);
    expect(run.pipeline.ready()).toEqual({ ok: true, reasons: [] });
    expect(sink.rows('events')).toEqual(range(1, 8).map(row));
    expect(await run.metric('sluice_sink_errors_total', { sink: 'default' })).toBe(4);
    const circuitEvents = run.events.map((e) => e.msg).filter((m) => /circuit/.test(m));
    expect(circuitEvents.map((m) => m.split(':')[0])).toEqual(['sink circuit open', 'sink circuit half-open', 'sink circuit open', 'sink circuit half-open', 'sink circuit closed']);
    await run.stop();
  });

  it('backpressure: while the sink fails and the WAL holds wal.max_bytes, nothing more is read or acked; reading resumes once it recovers', async () => {
    const clock = new ManualClock(Date.now());
    const { project } = testProject({
      'sluice.yml': 'duckdb:\n  threads: 1\nwal:\n  max_bytes: 1\n',
      'config/sources.yml': sourceYaml({ batch_size: 5, batch_timeout_ms: 100 }),
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: out\n  retry: { max_attempts: 1000, backoff_ms: 100, max_backoff_ms: 100 }\n  circuit: { failures: 1000 }\n',
    });
    const source = new FakeSource({ key: ordinalKey });
    const sink = new FakeSink(clock);
    sink.break();
    const run = runInProcess({ project, source, sinks: { default: sink }, clock });
    source.push(...range(1, 5).map(msg));
    await waitFor('the first batch acked and its flush failed', () => source.ackedPayloads.length === 5 && sink.failures === 1);
    // The next batch is read (the read runs ahead by one), then the loop pauses before committing it.
    source.push(...range(6, 10).map(msg));
    await run.event(/^reading paused/);
    source.push(...range(11, 15).map(msg));
    const failures = sink.failures;
    await stepUntil(
      clock,
      'three more failed retries while paused',
      () => sink.failures >= failures + 3,
      () => sink.attempts.length,
      100,
    );
    expect(source.handedOver).toBe(10);
    expect(source.ackedPayloads).toEqual(range(1, 5).map(msg));
    expect(run.pipeline.ready().reasons).toContainEqual(expect.stringMatching(/^reading paused: the WAL holds \d+ bytes \(wal.max_bytes 1\) while a sink fails/));

    sink.repair();
    await stepUntil(
      clock,
      'every row at the sink',
      () => sink.rows('events').length === 15,
      () => sink.attempts.length + source.polls.length,
      100,
    );
    await run.event('reading resumed');
    expect(sink.rows('events')).toEqual(range(1, 15).map(row));
    expect(source.ackedPayloads).toEqual(range(1, 15).map(msg));
    await run.stop();
  });
});
