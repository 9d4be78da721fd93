// Redis Streams benchmark: sluice draining a stream backlog of order messages through the
// `orders` and `purchases` models to Parquet, against a bare node-redis consumer (XREADGROUP of
// a batch, then one XACK of its ids) draining the same backlog in the same run.
//
// Without --batch-size, sluice's source block sets no batch keys: what a user gets (batch_size a
// ceiling of 25,000, batch_timeout_ms 1000; Redis has no read-ahead key: the source's XREADGROUP
// COUNT follows the batch being filled). The bare consumer then reads and acks 10,000 entries at
// a time, as it did when the benchmark set batch_size 10,000. With --batch-size B: sluice's
// batch_size B and batch_timeout_ms 1000, the bare consumer's COUNT B.
//
//   node bench/run.mjs redis_streams [--messages 200000] [--runs 5] [--batch-size B] [--threads T] [--debug 1]
import { createClient } from 'redis';
import { batchYaml, drainBench, drainFlags, orderBodies, pidsNamed } from './lib.mjs';
import { orderMessage } from '../dist/connectors/generator/generator-source.js';

const flags = drainFlags('redis_streams');
const COUNT = flags.bareBatch;
const URL = process.env.SLUICE_BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';
const { bodies, itemsIn } = orderBodies(orderMessage);
const STREAM = `sluice-bench-${process.pid}`;

const redis = createClient({ url: URL });
await redis.connect();

/** A fresh stream holding n entries (`payload` field), no consumer group. */
async function fill(n) {
  await redis.del(STREAM);
  for (let i = 0; i < n; i += 2000) {
    const multi = redis.multi();
    for (let j = i; j < Math.min(n, i + 2000); j++) multi.xAdd(STREAM, '*', { payload: bodies[j % bodies.length] });
    await multi.execAsPipeline();
  }
}

/** The baseline: XREADGROUP up to a batch, XACK the batch's ids in one command, repeat. */
async function bare(n) {
  await redis.xGroupCreate(STREAM, 'bare', '0');
  const t0 = performance.now();
  let got = 0;
  while (got < n) {
    const r = await redis.xReadGroup('bare', 'c1', { key: STREAM, id: '>' }, { COUNT, BLOCK: 1000 });
    const ids = (r?.[0]?.messages ?? []).map((m) => m.id);
    if (ids.length) await redis.xAck(STREAM, 'bare', ids);
    got += ids.length;
  }
  return n / ((performance.now() - t0) / 1000);
}

await drainBench({
  name: 'redis_streams',
  label: 'redis',
  title: 'Redis Streams',
  baseline: 'bare node-redis consumer',
  flags,
  fill,
  bare,
  brokerPids: () => (process.env.SLUICE_BENCH_REDIS_URL ? [] : pidsNamed('redis-server')),
  sourceYaml: `source:\n  type: redis_streams\n  url: ${URL}\n  stream: ${STREAM}\n${batchYaml(flags)}`,
  bareKeys: { count: COUNT },
  bareSettings: `XREADGROUP COUNT ${COUNT.toLocaleString('en-US')}, one XACK per read${flags.batch === undefined ? ' (as when the benchmark set batch_size 10,000)' : ''}`,
  bodies,
  itemsIn,
});
await redis.del(STREAM);
await redis.quit();
