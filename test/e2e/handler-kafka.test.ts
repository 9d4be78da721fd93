import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { query, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { ensureTopic, produce, startMockKafka, uniqueTopic, type MockKafka } from '../helpers/kafka.js';

// A handler over Kafka (librdkafka's mock cluster): each row carries its message's metadata
// (topic, partition, offset, key) and payload; onAssign hears of the partitions the worker is
// given, and, when a second worker joins the group, onRevoke of those it gives up.

let mk: MockKafka;
const root = tempDir('sluice-handler-kafka-');
beforeAll(async () => {
  mk = await startMockKafka();
});
afterAll(async () => {
  await mk?.stop();
  fs.rmSync(root, { recursive: true, force: true });
});

const HANDLER = `import { defineHandler } from 'sluice';

export default defineHandler({
  process: ({ value, raw, meta }) => ({ id: value.id, topic: meta.topic, partition: meta.partition, offset: meta.offset, key: meta.key, raw }),
  onAssign(partitions, ctx) {
    ctx.log.info('assigned', { partitions: [...partitions].sort().join(',') });
  },
  onRevoke(partitions, ctx) {
    ctx.log.info('revoked', { partitions: [...partitions].sort().join(',') });
  },
});
`;

describe('a handler over Kafka', () => {
  it('gets each message with its metadata; onAssign and onRevoke follow the group as a second worker joins', async () => {
    const topic = uniqueTopic('sluice-handler');
    await ensureTopic(mk.admin, topic);
    const p = path.join(root, 'proj');
    writeFiles(p, {
      'config/sources.yml': `source:\n  type: kafka\n  brokers: ${mk.brokers}\n  topics: [${topic}]\n  group_id: g-${topic}\n  session_timeout_ms: 4000\n  rebalance_timeout_ms: 4000\n  heartbeat_interval_ms: 400\n  max_wait_ms: 100\n  batch_timeout_ms: 200\n`,
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
      'config/models.yml': 'max_age_seconds: 0.3\n',
      'handlers/tagged.ts': HANDLER,
    });
    const messages = Array.from({ length: 200 }, (_, id) => ({ key: `k${id % 10}`, value: JSON.stringify({ id }) }));
    await produce(mk.producer, topic, messages);
    const rows = async () =>
      fs.existsSync(path.join(p, 'output/tagged')) ? await query(`SELECT id, topic, partition, "offset", key, raw FROM read_parquet('${p}/output/tagged/*.parquet') ORDER BY id`) : [];
    const a = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 'a' } });
    let b: ReturnType<typeof sluiceBg> | undefined;
    try {
      await until(async () => (await rows()).length >= 200, 60_000, 200, 'the 200 messages in the output');
      const all = `${topic}/0,${topic}/1,${topic}/2,${topic}/3`;
      expect(a.err()).toContain(`assigned partitions=${all} handler=tagged`);
      const got = await rows();
      expect(got.map((r) => Number(r.id))).toEqual(messages.map((_, i) => i));
      for (const r of got) {
        expect(r.topic).toBe(topic);
        expect(r.key).toBe(`k${Number(r.id) % 10}`);
        expect(r.raw).toBe(JSON.stringify({ id: Number(r.id) }));
        expect(Number(r.partition)).toBeGreaterThanOrEqual(0);
        expect(Number(r.offset)).toBeGreaterThanOrEqual(0);
      }
      // A second worker: the group shares the four partitions; the first gives some up.
      b = sluiceBg(['run', '--project', p, '--port', '0'], { env: { SLUICE_WORKER_ID: 'b' } });
      await produce(
        mk.producer,
        topic,
        Array.from({ length: 40 }, (_, i) => ({ value: JSON.stringify({ id: 200 + i }) })),
      );
      const revoked = await until(() => /revoked partitions=(\S+) handler=tagged/.exec(a.err())?.[1], 60_000, 100, 'worker a to give partitions up');
      expect(revoked.split(',').length).toBeGreaterThan(0);
      expect(revoked.split(',').length).toBeLessThan(4);
      await until(() => /assigned partitions=(\S+) handler=tagged/.exec(b!.err())?.[1], 60_000, 100, 'worker b to be given partitions');
    } finally {
      a.kill('SIGTERM');
      b?.kill('SIGTERM');
    }
    expect((await waitExit(a, 60_000)).code).toBe(0);
    if (b) expect((await waitExit(b, 60_000)).code).toBe(0);
  });
});
