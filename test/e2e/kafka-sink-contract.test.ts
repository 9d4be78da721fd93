import { afterAll, beforeAll } from 'vitest';
import { readAll, startMockKafka, topicSize, type MockKafka } from '../helpers/kafka.js';
import { sinkContract, type SinkTarget, type SinkUnderTest } from '../helpers/sink-contract.js';

// The kafka sink against a librdkafka mock cluster of this file's own (kcat): the sink contract
// with the sink's defaults (one transaction per flush, acks=all). Rows are read back by
// consuming the topic (read_committed). Breaking it for real freezes the cluster's brokers
// (SIGSTOP): connections stay open and every request hangs, as with a broker host that stopped
// answering; thawing (SIGCONT) lets them answer again. The sink is not idempotent: a flush
// replayed after a crash between its transaction commit and the WAL truncation is produced
// again (at least once, at most twice in the contract's replay).

let mk: MockKafka;
let frozen = false;

beforeAll(async () => {
  mk = await startMockKafka();
}, 60_000);
afterAll(async () => {
  await mk?.stop();
});

const topicOf = (t: SinkTarget) => `sluice-contract.${t.id}`;

const kafkaSut: SinkUnderTest = {
  name: 'kafka',
  idempotent: false,
  largeRows: 50_000,
  // Short timeouts: a frozen cluster shows as a failing sink within seconds, not minutes.
  config: (t) => ({ type: 'kafka', brokers: mk.brokers, topic: topicOf(t), connect_timeout_ms: 3000, request_timeout_ms: 3000 }),
  async readRows(t) {
    // A frozen cluster answers nothing: reading fails (the contract reads it as "no row yet").
    if (frozen) throw new Error('the cluster is frozen: nothing can be read');
    if ((await topicSize(mk.admin, topicOf(t))) === 0) return [];
    const rows = (await readAll(mk.kafka, mk.admin, topicOf(t), 60_000)).map((m) => JSON.parse(m.value) as Record<string, unknown>);
    const copies = rows.length - new Set(rows.map((r) => String(r.id))).size;
    if (copies) console.log(`kafka sink contract: ${topicOf(t)} holds ${rows.length} rows, ${copies} of them copies of a replayed flush`);
    return rows;
  },
  async breakIt() {
    mk.freeze();
    frozen = true;
  },
  async fixIt() {
    mk.thaw();
    frozen = false;
  },
};

sinkContract(kafkaSut);
