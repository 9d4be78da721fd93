import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import amqp from 'amqplib';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, RetentionPolicy, StorageType, type JetStreamManager } from '@nats-io/jetstream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, ROOT, sluiceAsync, tempDir, waitExit, writeFiles, type CliResult } from '../helpers/cli.js';
import { AMQP_URL, deleteQueues, queueDepth, uniqueQueue } from '../helpers/rabbit.js';
import { ensureTopic, produce, startMockKafka, uniqueTopic, type MockKafka } from '../helpers/kafka.js';
import { machineLock } from '../helpers/machine-lock.js';
import { lockPostgres, pgQuery, pgRows } from '../helpers/sql-db.js';
import { topicGone } from '../../src/connectors/kafka/kafka-infra.js';

// `sluice plan` / `apply` for the brokers' infrastructure: RabbitMQ queues, exchanges and
// bindings, NATS JetStream streams, Kafka topics, each connector's dead-letter ones included.
// The projects have no fixtures: the broker planners need no model columns. Every test uses
// names of its own and removes what it made (the Kafka mock cluster is this file's own).
// So the tests run concurrently, and the four blocks beside each other: most of a test's time
// is the CLI's start, on the other core when a neighbour waits for a broker.

const LONG_LOCK = 16 * 60_000;

function project(sources: string, sinks: string): string {
  const dir = tempDir('sluice-plan-brokers-');
  writeFiles(dir, { 'config/sources.yml': sources, 'config/sinks.yml': sinks, 'models/m.sql': 'SELECT * FROM incoming\n' });
  return dir;
}

const FILE_SOURCE = 'source:\n  type: file\n  path: in\n';
const JSONL_SINK = 'sink:\n  type: jsonl\n  path: out\n';

const plan = (dir: string) => sluiceAsync(['plan', '--project', dir]);
const apply = (dir: string, ...flags: string[]) => sluiceAsync(['apply', '--project', dir, ...flags]);

/** Runs the CLI with `input` on its standard input (a pipe: no terminal). */
async function sluiceAnswering(args: string[], input: string): Promise<CliResult> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdin.on('error', () => {});
  child.stdin.end(input);
  const exit = await waitExit(child, 60_000);
  return { code: exit.code ?? -1, stdout, stderr };
}

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise((r) => srv.close(r));
  return port;
}

function ok(r: CliResult): CliResult {
  expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
  return r;
}

/** No stack trace and no crash: the CLI's one-line errors only. */
function noStack(r: CliResult): void {
  expect(r.stderr).not.toMatch(/^\s+at /m);
  expect(r.stdout).not.toMatch(/^\s+at /m);
}

describe.concurrent('rabbitmq', () => {
  let conn: amqp.ChannelModel;
  let release: (() => void) | undefined;
  // rabbitmq.test.ts restarts the broker in one test: not while this block runs.
  beforeAll(async () => {
    release = await machineLock('rabbitmq');
    conn = await amqp.connect(AMQP_URL);
  }, LONG_LOCK);
  afterAll(async () => {
    await conn?.close().catch(() => {});
    release?.();
  });

  /** The answer of `fn` on a channel of its own, or the broker's error (which closes that channel). */
  async function onChannel<T>(fn: (ch: amqp.ConfirmChannel) => Promise<T>): Promise<T | Error> {
    const ch = await conn.createConfirmChannel();
    ch.on('error', () => {});
    try {
      const v = await fn(ch);
      await ch.close();
      return v;
    } catch (err) {
      return err as Error;
    }
  }
  const exchangeExists = async (name: string) => !((await onChannel((ch) => ch.checkExchange(name))) instanceof Error);
  const deleteExchanges = (...names: string[]) => Promise.all(names.map((n) => onChannel((ch) => ch.deleteExchange(n))));

  it('plan lists the missing queue, dead-letter queue, exchange and binding; apply creates them; the next plan is up to date', async () => {
    const q = uniqueQueue('plan-brokers');
    const ex = `${q}.ex`;
    const dir = project(
      `source:\n  type: rabbitmq\n  url: amqp://guest:guest@127.0.0.1:5672\n  queue: ${q}\n  declare:\n    exchange: { name: ${ex}, type: topic }\n    bindings: [{ exchange: ${ex}, routing_key: 'orders.#' }]\n`,
      JSONL_SINK,
    );
    try {
      const p = ok(await plan(dir));
      expect(p.stdout).toContain('source default (rabbitmq):');
      expect(p.stdout).toContain(`+ declare queue ${q} (durable; the queue the source consumes)`);
      expect(p.stdout).toContain(`+ declare queue ${q}.dlq (durable; the dead-letter queue)`);
      expect(p.stdout).toContain(`+ declare exchange ${ex} (topic, durable)`);
      expect(p.stdout).toContain(`+ bind queue ${q} to exchange ${ex} (routing key orders.#)`);
      expect(p.stdout).toContain('4 change(s), 0 destructive');
      // The URL's password (masked as a known secret wherever it would show) never appears.
      expect(p.stdout + p.stderr).not.toContain('guest');
      // plan changed nothing.
      expect(await queueDepth(q)).toBe(-1);
      expect(await queueDepth(`${q}.dlq`)).toBe(-1);
      expect(await exchangeExists(ex)).toBe(false);

      const a = ok(await apply(dir, '--auto-approve'));
      expect(a.stdout).toContain('4 change(s) applied');
      expect(await queueDepth(q)).toBe(0);
      expect(await queueDepth(`${q}.dlq`)).toBe(0);
      expect(await exchangeExists(ex)).toBe(true);
      // The binding is real: a message to the exchange with a matching key lands in the queue.
      await onChannel(async (ch) => {
        ch.publish(ex, 'orders.eu', Buffer.from('{}'), { persistent: true });
        await ch.waitForConfirms();
      });
      expect(await queueDepth(q)).toBe(1);

      const again = ok(await plan(dir));
      expect(again.stdout).toMatch(/source default \(rabbitmq\):\n {2}up to date\n/);
      expect(again.stdout).toContain(`note: binding of queue ${q} to exchange ${ex} (routing key orders.#): AMQP cannot read bindings`);
      expect(again.stdout).toContain('nothing to change');
    } finally {
      await deleteQueues(q, `${q}.dlq`);
      await deleteExchanges(ex);
    }
  });

  it('a queue declared with other settings is a destructive recreate: asked on stdin, skipped without --allow-destructive, applied with it', async () => {
    const q = uniqueQueue('plan-brokers');
    const created = await onChannel(async (ch) => {
      await ch.assertQueue(q, { durable: true, arguments: { 'x-message-ttl': 3_600_000 } });
      ch.sendToQueue(q, Buffer.from('{"kept":true}'), { persistent: true });
      await ch.waitForConfirms();
    });
    expect(created).not.toBeInstanceOf(Error);
    const dir = project(`source:\n  type: rabbitmq\n  host: 127.0.0.1\n  queue: ${q}\n`, JSONL_SINK);
    try {
      const p = ok(await plan(dir));
      expect(p.stdout).toContain(`- recreate queue ${q} as durable, without arguments (the queue the source consumes): it exists with other settings, inequivalent arg 'x-message-ttl'`);
      expect(p.stdout).toMatch(/deletes the queue and its 1 message\(s\)\s+\[destructive\]/);
      expect(p.stdout).toContain(`+ declare queue ${q}.dlq (durable; the dead-letter queue)`);
      expect(p.stdout).toContain('2 change(s), 1 destructive (applied only with --allow-destructive)');

      // Off a terminal, apply asks on stdin: anything but yes applies nothing.
      const no = await sluiceAnswering(['apply', '--project', dir], 'no\n');
      expect(no.code, no.stderr).toBe(0);
      expect(no.stdout).toContain('apply 1 change(s)? (yes/no)');
      expect(no.stdout).toContain('nothing applied');
      expect(await queueDepth(`${q}.dlq`)).toBe(-1);
      // No answer at all (stdin at its end) is a refusal that names --auto-approve.
      const none = await sluiceAnswering(['apply', '--project', dir], '');
      expect(none.code).toBe(2);
      expect(none.stderr).toContain('pass --auto-approve');
      noStack(none);

      const gated = await apply(dir, '--auto-approve');
      expect(gated.code).toBe(1);
      expect(gated.stdout).toContain('1 change(s) applied');
      expect(gated.stdout).toMatch(/1 destructive change\(s\) skipped \(rerun with --allow-destructive/);
      expect(await queueDepth(`${q}.dlq`)).toBe(0);
      expect(await queueDepth(q)).toBe(1); // untouched

      const yes = await sluiceAnswering(['apply', '--project', dir, '--allow-destructive'], 'yes\n');
      expect(yes.code, yes.stdout + yes.stderr).toBe(0);
      expect(yes.stdout).toContain('1 change(s) applied');
      expect(await queueDepth(q)).toBe(0);
      // Recreated as sluice declares it: the source's own declaration is accepted now.
      expect(await onChannel((ch) => ch.assertQueue(q, { durable: true }))).not.toBeInstanceOf(Error);
      expect(ok(await plan(dir)).stdout).toContain('up to date');
    } finally {
      await deleteQueues(q, `${q}.dlq`);
    }
  });

  it("the sink's exchange, declared queues and bindings; a wrong password in the URL is masked in the error", async () => {
    const q = uniqueQueue('plan-brokers');
    const ex = `${q}.out`;
    const sink = (url: string) => `sink:\n  type: rabbitmq\n  url: ${url}\n  exchange: ${ex}\n  routing_key: rows\n  declare:\n    exchange: direct\n    queues: [{ name: ${q}, binding_key: rows }]\n`;
    const dir = project(FILE_SOURCE, sink('amqp://guest:guest@127.0.0.1:5672'));
    try {
      const p = ok(await plan(dir));
      expect(p.stdout).toContain('sink default (rabbitmq):');
      expect(p.stdout).toContain(`+ declare queue ${q} (durable; declared by the sink)`);
      expect(p.stdout).toContain(`+ declare exchange ${ex} (direct, durable)`);
      expect(p.stdout).toContain(`+ bind queue ${q} to exchange ${ex} (routing key rows)`);
      expect(ok(await apply(dir, '--auto-approve')).stdout).toContain('3 change(s) applied');
      await onChannel(async (ch) => {
        ch.publish(ex, 'rows', Buffer.from('{}'), { persistent: true });
        await ch.waitForConfirms();
      });
      expect(await queueDepth(q)).toBe(1);
      expect(ok(await plan(dir)).stdout).toContain('nothing to change');

      const secret = `Pw-${randomUUID().slice(0, 12)}`;
      writeFiles(dir, { 'config/sinks.yml': sink(`amqp://guest:${secret}@127.0.0.1:5672`) });
      const refused = await plan(dir);
      expect(refused.code).toBe(1);
      expect(refused.stdout).toMatch(/sink default \(rabbitmq\):\n {2}warning: not planned: cannot connect to RabbitMQ at amqp:\/\/\*\*\*\*@127\.0\.0\.1:5672.*ACCESS_REFUSED/);
      expect(refused.stdout + refused.stderr).not.toContain(secret);
      noStack(refused);
    } finally {
      await deleteQueues(q);
      await deleteExchanges(ex);
    }
  });

  it('apply gives up on a standard input that stays open without an answer, naming --auto-approve', async () => {
    const q = uniqueQueue('plan-brokers');
    const dir = project(`source:\n  type: rabbitmq\n  host: 127.0.0.1\n  queue: ${q}\n`, JSONL_SINK);
    try {
      const child = spawn(process.execPath, [CLI, 'apply', '--project', dir, '--confirm-timeout', '2'], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const started = Date.now();
      // stdin is never written to nor closed.
      const exit = await waitExit(child, 30_000).finally(() => child.stdin.destroy());
      expect(exit.code, stdout + stderr).toBe(2);
      expect(Date.now() - started).toBeGreaterThanOrEqual(2000);
      expect(stdout).toContain('apply 2 change(s)? (yes/no)');
      expect(stderr).toContain('error: apply asks for confirmation, and standard input (not a terminal) gave no answer within 2 s; pass --auto-approve');
      expect(await queueDepth(q)).toBe(-1);
      expect(await queueDepth(`${q}.dlq`)).toBe(-1);
    } finally {
      await deleteQueues(q, `${q}.dlq`);
    }
  });
});

describe.concurrent('a connector that cannot be reached', () => {
  let release: (() => void) | undefined;
  // postgres-outage.test.ts stops PostgreSQL: not while this block runs.
  beforeAll(async () => {
    release = await lockPostgres();
  }, LONG_LOCK);
  afterAll(() => release?.());

  it('is reported as not planned; the other connectors are planned and applied; plan and apply exit 1', async () => {
    const port = await closedPort();
    const id = `${process.pid}_${randomUUID().slice(0, 8)}`;
    const table = `plan_unreach_${id}`;
    const state = `plan_unreach_state_${id}`;
    const dir = tempDir('sluice-plan-brokers-');
    writeFiles(dir, {
      'config/sources.yml': `source:\n  type: rabbitmq\n  host: 127.0.0.1\n  port: ${port}\n  queue: plan-unreachable\n`,
      'config/sinks.yml': `sink:\n  type: postgres\n  database: test\n  table: ${table}\n  state_table: ${state}\n`,
      'models/m.sql': 'SELECT incoming.k::BIGINT AS k FROM incoming\n',
      'tests/sample.json': '[{"k": 1}]',
    });
    try {
      const p = await plan(dir);
      noStack(p);
      expect(p.code, p.stdout + p.stderr).toBe(1);
      expect(p.stdout).toMatch(new RegExp(`source default \\(rabbitmq\\):\\n {2}warning: not planned: cannot connect to RabbitMQ at amqp://\\*\\*\\*\\*@127\\.0\\.0\\.1:${port}.*ECONNREFUSED`));
      expect(p.stdout).toContain(`+ create table public.${table} (k bigint)`);
      expect(p.stdout).toContain('2 change(s), 0 destructive; 1 connector(s) not planned (see above)');

      const a = await apply(dir, '--auto-approve');
      noStack(a);
      expect(a.code, a.stdout + a.stderr).toBe(1);
      expect(a.stdout).toContain('2 change(s) applied');
      expect(a.stdout).toContain('not planned, so nothing applied to: source default (rabbitmq) (see above)');
      expect(await pgRows(table)).toEqual([]); // the table exists now
    } finally {
      await pgQuery(`DROP TABLE IF EXISTS ${table}, ${state}`);
    }
  });
});

describe.concurrent('nats', () => {
  let nc: NatsConnection;
  let jsm: JetStreamManager;
  let release: (() => void) | undefined;
  // nats.test.ts restarts the NATS server in one test: not while this block runs.
  beforeAll(async () => {
    release = await machineLock('nats');
    nc = await connect({ servers: '127.0.0.1:4222' });
    jsm = await jetstreamManager(nc);
  }, LONG_LOCK);
  afterAll(async () => {
    await nc?.close();
    release?.();
  });

  const info = (stream: string) => jsm.streams.info(stream).catch(() => undefined);
  const deleteStreams = (...names: string[]) => Promise.all(names.map((n) => jsm.streams.delete(n).catch(() => false)));

  it("plan lists the source's stream and dead-letter stream and the sink's stream; apply creates them; a password in the URL never shows", async () => {
    const id = randomUUID().slice(0, 8);
    const stream = `PLAN_${id}`;
    const out = `PLAN_${id}_OUT`;
    const secret = `Nats-${randomUUID().slice(0, 12)}`;
    // The server has no authorization: it lets a client with any credentials in.
    const dir = project(
      `source:\n  type: nats\n  servers: nats://planner:${secret}@127.0.0.1:4222\n  stream: ${stream}\n  subjects: [plan.${id}.a]\n`,
      `sink:\n  type: nats\n  servers: nats://planner:${secret}@127.0.0.1:4222\n  subject: plan.${id}.out\n  stream: ${out}\n  subjects: ['plan.${id}.out']\n  duplicate_window_ms: 60000\n`,
    );
    try {
      const p = ok(await plan(dir));
      expect(p.stdout).toContain(`+ create stream ${stream} (subject plan.${id}.a; file storage; the stream the source reads)`);
      expect(p.stdout).toContain(`+ create stream ${stream}_DLQ (subject sluice.dlq.${stream}; file storage; the dead-letter stream)`);
      expect(p.stdout).toContain(`+ create stream ${out} (subject plan.${id}.out; file storage; the stream the sink publishes to)`);
      expect(p.stdout).toContain('3 change(s), 0 destructive');
      expect(p.stdout + p.stderr).not.toContain(secret);
      expect(await info(stream)).toBeUndefined();

      const a = ok(await apply(dir, '--auto-approve'));
      expect(a.stdout).toContain('3 change(s) applied');
      expect(a.stdout + a.stderr).not.toContain(secret);
      expect((await info(stream))?.config.subjects).toEqual([`plan.${id}.a`]);
      expect(await jsm.streams.find(`sluice.dlq.${stream}`)).toBe(`${stream}_DLQ`);
      const o = await info(out);
      expect(o?.config.storage).toBe(StorageType.File);
      expect(o?.config.duplicate_window).toBe(60_000 * 1_000_000);

      const again = ok(await plan(dir));
      expect(again.stdout).toMatch(/source default \(nats\):\n {2}up to date\nsink default \(nats\):\n {2}up to date\nnothing to change/);
    } finally {
      await deleteStreams(stream, `${stream}_DLQ`, out);
    }
  });

  it('missing subjects are an update, removed ones destructive; a dead-letter stream of another storage is noted, not recreated', async () => {
    const id = randomUUID().slice(0, 8);
    const stream = `PLAN_${id}`;
    await jsm.streams.add({ name: stream, subjects: [`plan.${id}.a`, `plan.${id}.b`] });
    await jsm.streams.add({ name: `${stream}_DLQ`, subjects: [`sluice.dlq.${stream}`], storage: StorageType.Memory });
    const dir = project(`source:\n  type: nats\n  stream: ${stream}\n  subjects: [plan.${id}.a, plan.${id}.c]\n`, JSONL_SINK);
    try {
      const p = ok(await plan(dir));
      expect(p.stdout).toMatch(new RegExp(`~ add subject plan\\.${id}\\.c to stream ${stream}\\n`));
      expect(p.stdout).toMatch(new RegExp(`- remove subject plan\\.${id}\\.b from stream ${stream}: messages published to it are no longer stored\\s+\\[destructive\\]`));
      expect(p.stdout).toContain(
        `note: dead-letter stream ${stream}_DLQ has memory storage, not the file storage and limits retention sluice creates streams with: plan changes nothing on it, and sluice run uses it as it is`,
      );
      expect(p.stdout).not.toContain('recreate');
      expect(p.stdout).toContain('2 change(s), 1 destructive');

      const gated = await apply(dir, '--auto-approve');
      expect(gated.code).toBe(1);
      expect(gated.stdout).toContain('1 change(s) applied');
      expect(gated.stdout).toContain('1 destructive change(s) skipped');
      expect((await info(stream))?.config.subjects).toEqual([`plan.${id}.a`, `plan.${id}.b`, `plan.${id}.c`]);

      ok(await apply(dir, '--auto-approve', '--allow-destructive'));
      expect((await info(stream))?.config.subjects).toEqual([`plan.${id}.a`, `plan.${id}.c`]);
      expect((await info(`${stream}_DLQ`))?.config.storage).toBe(StorageType.Memory);
      expect(ok(await plan(dir)).stdout).toContain('nothing to change');
    } finally {
      await deleteStreams(stream, `${stream}_DLQ`);
    }
  });

  it('streams sluice did not make (other retention, a foreign owner of the dead-letter subject, no subjects in the config) are noted and never changed, even with --allow-destructive', async () => {
    const id = randomUUID().slice(0, 8);
    const work = `PLAN_${id}_WORK`;
    const dead = `PLAN_${id}_DEAD`;
    const users = `PLAN_${id}_USERS`;
    await jsm.streams.add({ name: work, subjects: [`plan.${id}.work`], retention: RetentionPolicy.Workqueue });
    await jsm.streams.add({ name: dead, subjects: [`plan.${id}.dead`], storage: StorageType.Memory });
    await jsm.streams.add({ name: users, subjects: [`plan.${id}.users`], retention: RetentionPolicy.Interest });
    const js = jetstream(nc);
    await js.publish(`plan.${id}.work`, '{"kept":1}');
    await js.publish(`plan.${id}.dead`, '{"kept":2}');
    const dir = tempDir('sluice-plan-brokers-');
    writeFiles(dir, {
      'config/sources.yml':
        `sources:\n  work:\n    type: nats\n    stream: ${work}\n    subjects: [plan.${id}.work, plan.${id}.more]\n    dlq: plan.${id}.dead\n` +
        `  users:\n    type: nats\n    stream: ${users}\n    dlq: plan.${id}.dead\n`,
      'config/sinks.yml': JSONL_SINK,
      'models/m.sql': "SELECT * FROM {{ source('work') }}\n",
      'models/u.sql': "SELECT * FROM {{ source('users') }}\n",
    });
    try {
      const p = ok(await plan(dir));
      expect(p.stdout).toContain(
        `note: stream ${work} (the stream the source reads) has workqueue retention, not the file storage and limits retention sluice creates streams with, so it is not sluice's: plan changes nothing on it, and sluice run uses it as it is; it lacks subject plan.${id}.more of the config`,
      );
      expect(p.stdout).toContain(`note: dead letters go to stream ${dead}, which captures subject plan.${id}.dead; it is not the stream sluice would create (${work}_DLQ), so plan leaves it as it is`);
      expect(p.stdout).toContain(`note: stream ${users} (the stream the source reads) is yours (no subjects for it in the config): plan only checks that it exists`);
      expect(p.stdout).toMatch(/source work \(nats\):\n {2}up to date\n/);
      expect(p.stdout).toContain('nothing to change');

      ok(await apply(dir, '--auto-approve', '--allow-destructive'));
      for (const [name, messages] of [
        [work, 1],
        [dead, 1],
        [users, 0],
      ] as const) {
        const i = await info(name);
        expect(i?.state.messages, name).toBe(messages);
      }
      expect((await info(work))?.config.retention).toBe(RetentionPolicy.Workqueue);
      expect((await info(work))?.config.subjects).toEqual([`plan.${id}.work`]);
      expect((await info(dead))?.config.storage).toBe(StorageType.Memory);
      expect(await info(`${work}_DLQ`)).toBeUndefined();
    } finally {
      await deleteStreams(work, dead, users);
    }
  });

  it('a source and a sink that give one stream other subjects get a warning each, not changes that undo each other; agreeing ones create it once', async () => {
    const id = randomUUID().slice(0, 8);
    const stream = `PLAN_${id}_SHARED`;
    const source = (subjects: string) => `source:\n  type: nats\n  stream: ${stream}\n  subjects: [${subjects}]\n`;
    const sink = (subjects: string) => `sink:\n  type: nats\n  subject: plan.${id}.out\n  stream: ${stream}\n  subjects: [${subjects}]\n  duplicate_window_ms: 30000\n`;
    const dir = project(source(`plan.${id}.in`), sink(`plan.${id}.in, plan.${id}.out`));
    try {
      const p = ok(await plan(dir));
      const clash = `stream ${stream}: source default (nats) declares subjects plan.${id}.in, but sink default (nats) declares subjects plan.${id}.in, plan.${id}.out, duplicate_window_ms 30000 (they list other subjects)`;
      expect(p.stdout).toContain(`warning: ${clash}: plan changes it for neither`);
      expect(p.stdout).toContain(
        `warning: stream ${stream}: sink default (nats) declares subjects plan.${id}.in, plan.${id}.out, duplicate_window_ms 30000, but source default (nats) declares subjects plan.${id}.in (they list other subjects)`,
      );
      expect(p.stdout).not.toContain(`create stream ${stream} `);
      // The source's dead-letter stream is planned as usual.
      expect(p.stdout).toContain(`+ create stream ${stream}_DLQ`);
      expect(p.stdout).toContain('1 change(s), 0 destructive');
      ok(await apply(dir, '--auto-approve'));
      expect(await info(stream)).toBeUndefined();

      // The same subjects: one create, the sink's (it also sets the duplicate window); then nothing to change.
      writeFiles(dir, { 'config/sources.yml': source(`plan.${id}.in, plan.${id}.out`) });
      const agreed = ok(await plan(dir));
      expect(agreed.stdout).toContain(`note: stream ${stream}: also needed by sink default (nats); its changes are listed there`);
      expect(agreed.stdout.match(new RegExp(`\\+ create stream ${stream} `, 'g'))).toHaveLength(1);
      expect(agreed.stdout).toContain('1 change(s), 0 destructive');
      ok(await apply(dir, '--auto-approve'));
      expect((await info(stream))?.config.duplicate_window).toBe(30_000 * 1_000_000);
      expect(ok(await plan(dir)).stdout).toContain('nothing to change');
    } finally {
      await deleteStreams(stream, `${stream}_DLQ`);
    }
  });
});

describe.concurrent('kafka (the mock cluster, which refuses CreateTopics)', () => {
  let k: MockKafka;
  beforeAll(async () => {
    k = await startMockKafka();
  });
  afterAll(async () => {
    await k?.stop();
  });

  it('plan lists the missing topics without creating them; apply reports the refusal and what to do; partition counts are compared', async () => {
    const topic = uniqueTopic('plan');
    const sinkTopic = uniqueTopic('plan-out');
    const source = (extra = '') => `source:\n  type: kafka\n  brokers: ${k.brokers}\n  topics: [${topic}]\n${extra}`;
    const sink = (extra = '') => `sink:\n  type: kafka\n  brokers: ${k.brokers}\n  topic: ${sinkTopic}\n${extra}`;
    const dir = project(source(), sink());

    const p = ok(await plan(dir));
    expect(p.stdout).toContain(`+ create topic ${topic} (the broker's default partition count; read by the source)`);
    expect(p.stdout).toContain(`+ create topic ${topic}_dlq (the broker's default partition count; dead letters of ${topic})`);
    expect(p.stdout).toContain(`+ create topic ${sinkTopic} (the broker's default partition count; written by the sink)`);
    expect(p.stdout).toContain('warning: the cluster names no controller among its brokers');
    // Reading the plan did not make the broker auto-create them.
    const after = await k.admin.listTopics();
    for (const t of [topic, `${topic}_dlq`, sinkTopic]) expect(after).not.toContain(t);

    const a = await apply(dir, '--auto-approve');
    expect(a.code).toBe(1);
    noStack(a);
    expect(a.stdout).toContain(`failed: + create topic ${topic} `);
    expect(a.stdout).toContain(`kafka: the broker did not create topic ${topic}:`);
    expect(a.stdout).toContain(`create topic ${topic} with the cluster's own tools (kafka-topics.sh --create --topic ${topic})`);
    expect(a.stdout).toContain('auto.create.topics.enable=true');
    expect(a.stdout).toMatch(/2 change\(s\) failed \(see above\); 1 change\(s\) after them not tried/);

    // The broker creates them on first use (4 partitions here): then nothing is missing.
    for (const t of [topic, `${topic}_dlq`, sinkTopic]) await ensureTopic(k.admin, t);
    expect(ok(await plan(dir)).stdout).toMatch(/source default \(kafka\):\n {2}up to date\nsink default \(kafka\):\n {2}up to date\nnothing to change/);

    // More partitions wanted is an update; fewer is destructive (Kafka cannot remove partitions).
    writeFiles(dir, { 'config/sources.yml': source('  partitions: 6\n'), 'config/sinks.yml': sink('  partitions: 2\n') });
    const grown = ok(await plan(dir));
    expect(grown.stdout).toMatch(new RegExp(`~ add partitions to topic ${topic}: 4 -> 6\\n`));
    expect(grown.stdout).toMatch(
      new RegExp(
        `- recreate topic ${sinkTopic} with 2 partitions, keeping its replication factor \\(3\\) and settings: it has 4, and Kafka cannot remove partitions; deletes the topic and every message in it\\s+\\[destructive\\]`,
      ),
    );
    const gated = await apply(dir, '--auto-approve');
    expect(gated.code).toBe(1);
    noStack(gated);
    expect(gated.stdout).toContain(`kafka: the broker did not add partitions to topic ${topic}:`);
    expect(gated.stdout).toContain(`kafka-topics.sh --alter --topic ${topic} --partitions 6`);
    expect(gated.stdout).toContain('1 destructive change(s) skipped');
    expect((await k.admin.fetchTopicMetadata({ topics: [topic] })).topics[0].partitions).toHaveLength(4);

    // With --allow-destructive the sink's topic is recreated: its settings are read first, so a
    // cluster that refuses that (the mock cluster) has nothing deleted.
    await produce(k.producer, sinkTopic, ['{"kept":1}']);
    const recreate = await apply(dir, '--auto-approve', '--allow-destructive');
    expect(recreate.code).toBe(1);
    noStack(recreate);
    expect(recreate.stdout).toContain(`kafka: the broker did not describe topic ${sinkTopic} (its replication factor and settings, to recreate it with)`);
    expect(recreate.stdout).toContain('nothing was deleted');
    expect(await k.admin.listTopics()).toContain(sinkTopic);
    expect((await k.admin.fetchTopicOffsets(sinkTopic)).reduce((n, p) => n + Number(p.high), 0)).toBe(1);
  });

  it('a topic the source reads is never recreated, by its own plan nor by a sink of the project: a warning says why and what to do', async () => {
    const topic = uniqueTopic('plan-read');
    await ensureTopic(k.admin, topic);
    await ensureTopic(k.admin, `${topic}_dlq`);
    await produce(k.producer, topic, ['{"n":1}', '{"n":2}']);
    const dir = project(`source:\n  type: kafka\n  brokers: ${k.brokers}\n  topics: [${topic}]\n  partitions: 2\n`, JSONL_SINK);
    const p = ok(await plan(dir));
    expect(p.stdout).toContain(
      `warning: topic ${topic} has 4 partitions, more than partitions: 2, and Kafka cannot remove partitions; plan never recreates a topic a source reads: a new topic starts its offsets at 0 again, while sluice keeps the source's position in its WAL`,
    );
    expect(p.stdout).toContain('Keep partitions: 4 (or drop the key), or move the source to a topic of a new name');
    expect(p.stdout).not.toContain('recreate topic');
    expect(p.stdout).toContain('nothing to change; 1 warning(s) above that apply cannot fix');
    const a = ok(await apply(dir, '--auto-approve', '--allow-destructive'));
    expect(a.stdout).toContain('0 change(s) applied');

    // A sink of the same project that wants fewer partitions on it: its recreate is left out.
    writeFiles(dir, {
      'config/sources.yml': `source:\n  type: kafka\n  brokers: ${k.brokers}\n  topics: [${topic}]\n`,
      'config/sinks.yml': `sink:\n  type: kafka\n  brokers: ${k.brokers}\n  topic: ${topic}\n  partitions: 2\n`,
    });
    const shared = ok(await plan(dir));
    expect(shared.stdout).toMatch(
      new RegExp(
        `sink default \\(kafka\\):\\n(?: {2}.*\\n)* {2}warning: topic ${topic}: plan leaves out "recreate topic ${topic} with 2 partitions, .*", as source default \\(kafka\\) needs it kept: it reads the topic, and a recreated topic's offsets start at 0 again, below the position sluice keeps for it`,
      ),
    );
    expect(shared.stdout).not.toMatch(/\[destructive\]/);
    // The controller warning spoke of the recreate: gone with it.
    expect(shared.stdout).not.toContain('names no controller');
    ok(await apply(dir, '--auto-approve', '--allow-destructive'));
    expect((await k.admin.fetchTopicOffsets(topic)).reduce((n, p) => n + Number(p.high), 0)).toBe(2);
  });

  it('a source and a sink that want other partition counts of one topic get a warning each, not changes', async () => {
    const topic = uniqueTopic('plan-both');
    await ensureTopic(k.admin, topic);
    const dir = project(
      `source:\n  type: kafka\n  brokers: ${k.brokers}\n  topics: [${topic}]\n  partitions: 6\n  dlq: ${topic}_dlq\n`,
      `sink:\n  type: kafka\n  brokers: ${k.brokers}\n  topic: ${topic}\n  partitions: 8\n`,
    );
    const p = ok(await plan(dir));
    expect(p.stdout).toContain(
      `warning: topic ${topic}: source default (kafka) declares partitions: 6, but sink default (kafka) declares partitions: 8 (one wants 6 partitions, the other 8): plan changes it for neither, as each apply would undo the other's change; make the two configs agree`,
    );
    expect(p.stdout).toContain(`warning: topic ${topic}: sink default (kafka) declares partitions: 8, but source default (kafka) declares partitions: 6`);
    expect(p.stdout).not.toContain('add partitions');
    expect(p.stdout).toContain(`+ create topic ${topic}_dlq`);
    expect(p.stdout).toContain('1 change(s), 0 destructive');
  });

  it('the wait for a deleted topic to go ends as a timeout, not as a refusal', async () => {
    const topic = uniqueTopic('plan-gone');
    await ensureTopic(k.admin, topic);
    const started = Date.now();
    const err = await topicGone(k.admin, topic, 1500, `create it again: kafka-topics.sh --create --topic ${topic}`).catch((e: Error) => e);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1500);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toBe(
      `kafka: timed out: topic ${topic} was deleted, but the cluster still lists it 1.5 s later (it may still be removing it). Once it is gone, create it again: kafka-topics.sh --create --topic ${topic}`,
    );
    expect((err as Error).message).not.toContain('refuse admin requests');
    // A topic that is not listed is gone at once.
    await expect(topicGone(k.admin, uniqueTopic('plan-never'), 1500, '')).resolves.toBeUndefined();
  });
});
