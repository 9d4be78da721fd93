import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/ops/logger.js';
import { Wal } from '../../src/wal/wal.js';

// The WAL in process, on real files: the engine's checkpoint is stored as given and handed
// back; a commit that fails leaves the state as it is on disk; an abandoned batch's segments go.

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
    fs.writeFileSync(path.join(d, 'state.json'), JSON.stringify({ version: 1, seq: 3, position: { ordinal: 30 }, dlq: { bytes: 0 }, structure: { id: 'UBIGINT' }, schemas: { m: [{ name: 'id', type: 'BIGINT' }] }, models: { m: { flushedSeq: 3 } } }));
    const wal = new Wal(d, silentLogger());
    await wal.open(['m']);
    expect(wal.state).toEqual({ version: 2, seq: 3, checkpoint: { position: { ordinal: 30 }, dlq: { bytes: 0 }, structure: { id: 'UBIGINT' }, schemas: { m: [{ name: 'id', type: 'BIGINT' }] } }, models: { m: { flushedSeq: 3 } } });
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
});
