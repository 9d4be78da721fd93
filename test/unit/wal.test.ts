import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/ops/logger.js';
import { MAX_SEGMENTS_PER_FLUSH, Wal } from '../../src/wal/wal.js';
import { ManualClock } from '../helpers/clock.js';

// The WAL in process, on real files: the engine's checkpoint is stored as given and handed
// back; a commit that fails leaves the state as it is on disk; an abandoned batch's segments go;
// a flush keeps its name and the sinks that have it across restarts; open() drops what never
// committed or was already flushed.

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-wal-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function dir(name: string): string {
  const d = path.join(root, name);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

async function stage(wal: Wal, model: string, seq: number): Promise<void> {
  const p = wal.segmentPaths(model, seq, `k${seq}`, `k${seq}`);
  fs.writeFileSync(p.tmp, `segment ${seq}`);
  await wal.publishSegment(model, seq, `k${seq}`, `k${seq}`, p.tmp, p.final);
}

/** Stages and commits batch `seq` of `model`. */
async function commit(wal: Wal, model: string, seq: number): Promise<void> {
  await stage(wal, model, seq);
  await wal.commit(seq, { position: seq }, [model]);
}

async function reopen(d: string, models = ['m']): Promise<Wal> {
  const wal = new Wal(d, silentLogger());
  await wal.open(models);
  return wal;
}

const seqs = (wal: Wal, model = 'm') => wal.pending(model).map((s) => s.seq);
const files = (wal: Wal, model = 'm') => fs.readdirSync(wal.modelDir(model)).sort();

describe('WAL', () => {
  it('stores the checkpoint it is given and hands it back after a restart', async () => {
    const d = dir('roundtrip');
    const wal = new Wal(d, silentLogger());
    await wal.open(['m']);
    expect(wal.state.checkpoint).toBeUndefined();
    const checkpoint = { position: { ordinal: 7 }, dlq: { bytes: 12 }, operator: { windows: [[1, 2]] } };
    await stage(wal, 'm', 1);
    await wal.commit(1, checkpoint, ['m']);
    const again = new Wal(d, silentLogger());
    await again.open(['m']);
    expect(again.state.seq).toBe(1);
    expect(again.state.checkpoint).toEqual(checkpoint);
    expect(again.pending('m').map((s) => s.seq)).toEqual([1]);
  });

  it('reads a state.json written before checkpoints: its engine fields become the checkpoint', async () => {
    const d = dir('v1');
    fs.writeFileSync(
      path.join(d, 'state.json'),
      JSON.stringify({
        version: 1,
        seq: 3,
        position: { ordinal: 30 },
        dlq: { bytes: 0 },
        structure: { id: 'UBIGINT' },
        schemas: { m: [{ name: 'id', type: 'BIGINT' }] },
        models: { m: { flushedSeq: 3 } },
      }),
    );
    const wal = new Wal(d, silentLogger());
    await wal.open(['m']);
    expect(wal.state).toEqual({
      version: 2,
      seq: 3,
      checkpoint: { position: { ordinal: 30 }, dlq: { bytes: 0 }, structure: { id: 'UBIGINT' }, schemas: { m: [{ name: 'id', type: 'BIGINT' }] } },
      models: { m: { flushedSeq: 3 } },
    });
  });

  it('a commit whose state write fails leaves the state as on disk; abandon() removes the batch, which then commits', async () => {
    const d = dir('failing');
    const wal = new Wal(d, silentLogger());
    await wal.open(['m']);
    await stage(wal, 'm', 1);
    await wal.commit(1, { position: 1 }, ['m']);
    await stage(wal, 'm', 2);
    // The state file's place is taken by a directory: the atomic rename fails for real.
    fs.rmSync(path.join(d, 'state.json'));
    fs.mkdirSync(path.join(d, 'state.json'));
    await expect(wal.commit(2, { position: 2 }, ['m'])).rejects.toThrow();
    expect(wal.state.seq).toBe(1);
    expect(wal.state.checkpoint).toEqual({ position: 1 });
    await wal.abandon();
    expect(wal.pending('m').map((s) => s.seq)).toEqual([1]);
    expect(fs.readdirSync(wal.modelDir('m')).filter((f) => f.startsWith('000000000002'))).toEqual([]);
    fs.rmdirSync(path.join(d, 'state.json'));
    await stage(wal, 'm', 2);
    await wal.commit(2, { position: 2 }, ['m']);
    const again = new Wal(d, silentLogger());
    await again.open(['m']);
    expect(again.state.checkpoint).toEqual({ position: 2 });
    expect(again.pending('m').map((s) => s.seq)).toEqual([1, 2]);
  });

  it('a flush keeps its name, its segments and the sinks that have it across a restart; endFlush records it and removes its segments', async () => {
    const d = dir('flush');
    const wal = await reopen(d);
    for (const seq of [1, 2, 3]) await commit(wal, 'm', seq);
    const flush = await wal.beginFlush('m');
    expect(flush).toMatchObject({ name: 'part-k1-k3', done: [] });
    expect(flush!.segments.map((s) => s.seq)).toEqual([1, 2, 3]);
    await wal.markSinkDone('m', 'a');
    // A batch committed after the flush began is not part of it.
    await commit(wal, 'm', 4);

    const again = await reopen(d);
    expect(again.hasInflight('m')).toBe(true);
    const resumed = await again.beginFlush('m');
    expect(resumed).toMatchObject({ name: 'part-k1-k3', done: ['a'] });
    expect(resumed!.segments.map((s) => s.seq)).toEqual([1, 2, 3]);
    await again.endFlush('m');
    expect(seqs(again)).toEqual([4]);
    expect(files(again)).toEqual(['000000000004_k4_k4.parquet']);
    expect(again.state.models.m).toEqual({ flushedSeq: 3 });
    const third = await reopen(d);
    expect(seqs(third)).toEqual([4]);
    expect(third.hasInflight('m')).toBe(false);
  });

  it('open() drops segments of a batch that never committed, segments already flushed and temp files; what is left is replayed', async () => {
    const d = dir('sweep');
    const wal = await reopen(d);
    await commit(wal, 'm', 1);
    await commit(wal, 'm', 2);
    await wal.beginFlush('m');
    await wal.endFlush('m');
    await commit(wal, 'm', 3);
    // A crash mid-truncate left a flushed segment; one after the commit left a batch's segment
    // that never committed, and temp files of writes in progress.
    fs.writeFileSync(path.join(wal.modelDir('m'), '000000000001_k1_k1.parquet'), 'flushed');
    await stage(wal, 'm', 4);
    fs.writeFileSync(path.join(wal.modelDir('m'), '.000000000005_k5_k5.parquet.tmp'), 'half');
    fs.writeFileSync(path.join(d, '.state.json.tmp'), 'half');
    expect(files(wal)).toHaveLength(4);

    const again = await reopen(d);
    expect(again.state.seq).toBe(3);
    expect(seqs(again)).toEqual([3]);
    expect(files(again)).toEqual(['000000000003_k3_k3.parquet']);
    expect(fs.readdirSync(d).sort()).toEqual(['models', 'state.json']);
    // The next batch gets the sequence number of the dropped one.
    expect(again.nextSeq()).toBe(4);
  });

  it('stamps a segment with its commit time on the clock it is given (flush age)', async () => {
    const clock = new ManualClock(5_000);
    const wal = new Wal(dir('clock'), silentLogger(), clock);
    await wal.open(['m']);
    await stage(wal, 'm', 1);
    clock.advance(250);
    await stage(wal, 'm', 2);
    expect(wal.pending('m').map((s) => s.time)).toEqual([5_000, 5_250]);
  });
  it('a backlog is flushed in several flushes of at most MAX_SEGMENTS_PER_FLUSH segments, in order', async () => {
    const wal = await reopen(dir('backlog'));
    const n = MAX_SEGMENTS_PER_FLUSH + 6;
    for (let seq = 1; seq <= n; seq++) await commit(wal, 'm', seq);
    const first = (await wal.beginFlush('m'))!;
    expect(first.segments.map((x) => x.seq)).toEqual(Array.from({ length: MAX_SEGMENTS_PER_FLUSH }, (_, k) => k + 1));
    expect(first.name).toBe(`part-k1-k${MAX_SEGMENTS_PER_FLUSH}`);
    await wal.endFlush('m');
    const second = (await wal.beginFlush('m'))!;
    expect(second.segments.map((x) => x.seq)).toEqual([65, 66, 67, 68, 69, 70]);
    await wal.endFlush('m');
    expect(seqs(wal)).toEqual([]);
  });
});
