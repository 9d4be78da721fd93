import { createClient } from 'redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sluice, sluiceBg, until, waitExit, writeFiles } from '../helpers/cli.js';
import { dlqRecords, scenarioTargets, writeSinks } from '../helpers/service-sink.js';
import { addInput, contractProject, plainRows, runOnce, sinkContract, type SinkTarget, type SinkUnderTest } from '../helpers/sink-contract.js';

// The redis sink against the machine's Redis: the contract suite in both modes (set: a key per
// row; xadd: a stream entry per row, replays skipped by the flush's progress marker), then TTLs,
// key templates, the last row of a key winning, MAXLEN trimming. Each scenario's sink logs in as
// its own ACL user; breaking it for real revokes the user's write commands (NOPERM).

const admin = createClient({ url: 'redis://127.0.0.1:6379' });
beforeAll(async () => {
  await admin.connect();
});
afterAll(async () => {
  admin.destroy();
});

const user = (t: SinkTarget) => `sluice_${t.id}`;
const url = (t: SinkTarget) => `redis://${user(t)}:pw@127.0.0.1:6379`;
async function makeUser(t: SinkTarget): Promise<void> {
  await admin.sendCommand(['ACL', 'SETUSER', user(t), 'on', '>pw', '~*', '&*', '+@all']);
}
const cleanupUser = async (t: SinkTarget) => {
  await admin.sendCommand(['ACL', 'DELUSER', user(t)]);
  for await (const keys of admin.scanIterator({ MATCH: `${t.id}:*`, COUNT: 1000 })) if (keys.length) await admin.del(keys);
  const markers: string[] = [];
  for await (const keys of admin.scanIterator({ MATCH: `sluice:xadd:${t.id}:*`, COUNT: 1000 })) markers.push(...keys);
  if (markers.length) await admin.del(markers);
};
const breakIt = async (t: SinkTarget) => {
  await makeUser(t);
  await admin.sendCommand(['ACL', 'SETUSER', user(t), '-@write']);
};
const fixIt = async (t: SinkTarget) => {
  await admin.sendCommand(['ACL', 'SETUSER', user(t), '+@all']);
};

async function keyRows(prefix: string): Promise<Record<string, unknown>[]> {
  const keys: string[] = [];
  for await (const batch of admin.scanIterator({ MATCH: `${prefix}*`, COUNT: 5000 })) keys.push(...batch);
  const out: Record<string, unknown>[] = [];
  for (let i = 0; i < keys.length; i += 5000) {
    const values = await admin.mGet(keys.slice(i, i + 5000));
    for (const v of values) if (v !== null) out.push(JSON.parse(v) as Record<string, unknown>);
  }
  return out;
}

async function streamEntries(stream: string): Promise<{ id: string; message: Record<string, string> }[]> {
  return (await admin.xRange(stream, '-', '+')) as { id: string; message: Record<string, string> }[];
}

const setSut: SinkUnderTest = {
  name: 'redis (set)',
  idempotent: true,
  largeRows: 50_000,
  async config(t) {
    await makeUser(t);
    return { type: 'redis', url: url(t), mode: 'set', key: `${t.id}:{id}` };
  },
  readRows: (t) => keyRows(`${t.id}:`),
  breakIt,
  fixIt,
  cleanup: cleanupUser,
};

const xaddSut: SinkUnderTest = {
  name: 'redis (xadd)',
  idempotent: true,
  largeRows: 50_000,
  async config(t) {
    await makeUser(t);
    return { type: 'redis', url: url(t), mode: 'xadd', stream: `${t.id}:events`, batch_rows: 100 };
  },
  readRows: async (t) => (await streamEntries(`${t.id}:events`)).map((e) => JSON.parse(e.message.payload) as Record<string, unknown>),
  breakIt,
  fixIt,
  cleanup: cleanupUser,
};

sinkContract(setSut);
sinkContract(xaddSut);

const target = scenarioTargets('redis', cleanupUser);

describe('redis sink', () => {
  it('xadd: SIGKILLed again and again while flushes are being written, then run to the end: every row in the stream exactly once', async () => {
    const t = target();
    await makeUser(t);
    await contractProject(xaddSut, t, { batchSize: 500 });
    const stream = `${t.id}:kill`;
    writeSinks(t, { type: 'redis', url: url(t), mode: 'xadd', stream, batch_rows: 50 });
    // Small flushes, often, in MULTIs of 50 entries: a kill lands inside a flush.
    writeFiles(t.dir, { 'config/models.yml': 'max_age_seconds: 0.05\n' });
    const rows = plainRows(16_000);
    addInput(t, 'a.ndjson', rows);
    const args = ['run', '--project', t.dir, '--port', '0', '--log-level', 'warn'];
    let kills = 0;
    for (const threshold of [1_500, 4_500, 7_500, 10_500, 13_500]) {
      const child = sluiceBg(args);
      await until(async () => child.exitCode !== null || (await admin.xLen(stream)) >= threshold, 60_000, 5);
      if (child.exitCode === null) {
        child.kill('SIGKILL');
        kills++;
      }
      await waitExit(child);
    }
    expect(kills).toBeGreaterThanOrEqual(4);
    const r = runOnce(t);
    expect(r.code, r.stderr).toBe(0);
    const ids = (await streamEntries(stream)).map((e) => (JSON.parse(e.message.payload) as { id: number }).id);
    expect(new Set(ids).size).toBe(rows.length);
    expect(ids.length).toBe(rows.length);
  }, 120_000);

  it('validate fails, naming the sink and the model, when a template names a column the model lacks', async () => {
    const t = target();
    await contractProject(setSut, t);
    writeSinks(t, { type: 'redis', mode: 'set', key: 'order:{order_id}:{id}' });
    const r = sluice(['validate', '--project', t.dir]);
    expect(r.code).toBe(2);
    expect(r.stdout + r.stderr).toMatch(/config\/sinks\.yml:1: .*model events \(.*events\.sql\) has no column "order_id"/);
  }, 60_000);

  it('set: keys from a template, values the row JSON, the TTL set; the last row of a key wins', async () => {
    const t = target();
    await makeUser(t);
    await contractProject(setSut, t);
    writeSinks(t, { type: 'redis', url: url(t), mode: 'set', key: `${t.id}:user:{name}`, ttl_seconds: 3600 });
    // Ten rows over three names: the key of a name holds its last row.
    const rows = plainRows(10).map((r) => ({ ...r, name: `u${r.id % 3}` }));
    addInput(t, 'a.ndjson', rows);
    const r = runOnce(t);
    expect(r.code, r.stderr).toBe(0);
    for (const name of ['u0', 'u1', 'u2']) {
      const key = `${t.id}:user:${name}`;
      const last = rows.filter((x) => x.name === name).pop()!;
      expect(JSON.parse((await admin.get(key))!)).toEqual(last);
      const ttl = await admin.ttl(key);
      expect(ttl).toBeGreaterThan(3500);
      expect(ttl).toBeLessThanOrEqual(3600);
    }
    expect(await keyRows(`${t.id}:user:`)).toHaveLength(3);
  }, 60_000);

  it('set: a row whose key column is NULL is a permanent error: with on_error: dlq its flush goes to the DLQ at once, with the reason', async () => {
    const t = target();
    await makeUser(t);
    await contractProject(setSut, t);
    writeSinks(t, { type: 'redis', url: url(t), mode: 'set', key: `${t.id}:{note}`, on_error: 'dlq', batch_rows: 2 });
    const rows = plainRows(6); // notes only on ids 3 and 6
    addInput(t, 'a.ndjson', rows);
    const r = runOnce(t);
    expect(r.code, r.stderr).toBe(0);
    const dead = dlqRecords(t);
    // The flush failed as a whole: every row of it is in the DLQ with the reason.
    expect(dead).toHaveLength(6);
    expect(dead[0].stage).toBe('sink');
    expect(dead[0].error).toMatch(/has no key: a column of ".*\{note\}" is NULL/);
  }, 60_000);

  it("xadd: MAXLEN ~ trims the stream; entries carry sluice_id; the flush's progress marker lives dedupe_ttl_seconds (replays: see the contract)", async () => {
    const t = target();
    await makeUser(t);
    await contractProject(xaddSut, t, { batchSize: 500 });
    const stream = `${t.id}:trim`;
    writeSinks(t, { type: 'redis', url: url(t), mode: 'xadd', stream, maxlen: 1000, batch_rows: 500 });
    addInput(t, 'a.ndjson', plainRows(5000));
    const r = runOnce(t);
    expect(r.code, r.stderr).toBe(0);
    const len = await admin.xLen(stream);
    // Approximate trimming keeps at least maxlen, and far fewer than were added.
    expect(len).toBeGreaterThanOrEqual(1000);
    expect(len).toBeLessThan(5000);
    const entries = await streamEntries(stream);
    const last = entries[entries.length - 1];
    expect(JSON.parse(last.message.payload)).toMatchObject({ id: 5000 });
    expect(last.message.sluice_id).toMatch(/^proj\/events\/part-.+\/\d+$/);
    const markers: string[] = [];
    for await (const keys of admin.scanIterator({ MATCH: `sluice:xadd:${stream}:*`, COUNT: 1000 })) markers.push(...keys);
    expect(markers.length).toBeGreaterThan(0);
    expect(await admin.ttl(markers[0])).toBeGreaterThan(6 * 86_400);
  }, 60_000);
});
