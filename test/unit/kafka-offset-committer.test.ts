import { describe, expect, it } from 'vitest';
import { KafkaOffsetCommitter, type CommitOutcome, type OffsetCommit } from '../../src/connectors/kafka/kafka-offset-committer.js';

// The Kafka source's offset committer on its own: commit requests go to a recorder that can
// hold a request open (one in flight at a time) or refuse it, as the broker would.

const A0 = { topic: 'a', partition: 0 };
const A1 = { topic: 'a', partition: 1 };
const B0 = { topic: 'b', partition: 0 };

function setup() {
  const requests: string[][] = [];
  const errors: string[] = [];
  let hold: Promise<void> | undefined;
  let fail = 0;
  const committer = new KafkaOffsetCommitter(
    async (offsets: OffsetCommit[]) => {
      requests.push(offsets.map((o) => `${o.topic}:${o.partition}@${o.offset}`));
      if (fail > 0) {
        fail--;
        throw new Error('refused');
      }
      if (hold) await hold;
    },
    (err, offsets) => errors.push(`${(err as Error).message} ${offsets.map((o) => `${o.topic}:${o.partition}@${o.offset}`).join(' ')}`),
  );
  return {
    committer,
    requests,
    errors,
    /** The next requests wait until the returned function is called. */
    holdRequests(): () => void {
      let release!: () => void;
      hold = new Promise((r) => (release = r));
      return () => {
        hold = undefined;
        release();
      };
    },
    failNext(n = 1) {
      fail = n;
    },
  };
}

const tick = () => new Promise((r) => setImmediate(r));

/** The outcomes known so far, in the order given. */
function track(...ps: Promise<CommitOutcome>[]): (CommitOutcome | 'pending')[] {
  const out: (CommitOutcome | 'pending')[] = ps.map(() => 'pending');
  ps.forEach((p, i) => void p.then((o) => (out[i] = o)));
  return out;
}

describe('KafkaOffsetCommitter', () => {
  it("commits the next offset after each partition's acked messages", async () => {
    const { committer, requests } = setup();
    committer.assign([A0, A1]);
    const t1 = committer.handOut('a', 0, 0, 9);
    const t2 = committer.handOut('a', 1, 0, 4);
    expect(await committer.ack(t1)).toBe('committed');
    expect(await committer.ack(t2)).toBe('committed');
    expect(requests).toEqual([['a:0@10'], ['a:1@5']]);
    expect(committer.durable()).toEqual({ 'a:0': 10, 'a:1': 5 });
  });

  it('an ack ahead of an earlier ticket of its partition commits nothing until that one is acked', async () => {
    const { committer, requests } = setup();
    committer.assign([A0, A1]);
    const t1 = committer.handOut('a', 0, 0, 9);
    const t2 = committer.handOut('a', 0, 10, 19);
    const other = committer.handOut('a', 1, 0, 0);
    const seen = track(committer.ack(t2));
    await tick();
    expect(requests).toEqual([]);
    expect(seen).toEqual(['pending']);
    expect(committer.durable()).toEqual({});
    // Another partition is not held up by it.
    expect(await committer.ack(other)).toBe('committed');
    expect(await committer.ack(t1)).toBe('committed');
    await tick();
    expect(seen).toEqual(['committed']);
    expect(requests).toEqual([['a:1@1'], ['a:0@20']]);
    expect(committer.durable()).toEqual({ 'a:0': 20, 'a:1': 1 });
  });

  it('sends one request at a time; what is acked meanwhile goes out in the next, the highest offset per partition', async () => {
    const { committer, requests, holdRequests } = setup();
    committer.assign([A0, A1]);
    const t = [0, 1, 2].map((i) => committer.handOut('a', 0, i * 10, i * 10 + 9));
    const u = committer.handOut('a', 1, 0, 4);
    const release = holdRequests();
    const seen = track(committer.ack(t[0]), committer.ack(t[1]), committer.ack(t[2]), committer.ack(u));
    await tick();
    expect(requests).toEqual([['a:0@10']]);
    expect(seen).toEqual(['pending', 'pending', 'pending', 'pending']);
    release();
    await committer.idle();
    expect(requests).toEqual([['a:0@10'], ['a:0@30', 'a:1@5']]);
    expect(seen).toEqual(['committed', 'committed', 'committed', 'committed']);
  });

  it('a refused commit is reported and its tickets told; the next ack commits the further offset', async () => {
    const { committer, requests, errors, failNext } = setup();
    committer.assign([A0]);
    const t1 = committer.handOut('a', 0, 0, 9);
    const t2 = committer.handOut('a', 0, 10, 11);
    failNext();
    expect(await committer.ack(t1)).toBe('failed');
    expect(errors).toEqual(['refused a:0@10']);
    expect(await committer.ack(t2)).toBe('committed');
    expect(requests).toEqual([['a:0@10'], ['a:0@12']]);
  });

  it('tickets of an earlier generation are not committed, even of a partition kept, but keep their place and move the durable position', async () => {
    const { committer, requests } = setup();
    committer.assign([A0]);
    const old = committer.handOut('a', 0, 0, 9);
    committer.assign([A0]);
    const cur = committer.handOut('a', 0, 10, 19);
    const seen = track(committer.ack(cur));
    await tick();
    expect(requests).toEqual([]);
    expect(await committer.ack(old)).toBe('skipped');
    await committer.idle();
    // Once the earlier messages are durable too, the current ticket's offset covers both.
    expect(seen).toEqual(['committed']);
    expect(requests).toEqual([['a:0@20']]);
    expect(committer.durable()).toEqual({ 'a:0': 20 });
  });

  it('a partition revoked since its messages were handed out is not committed; the others are', async () => {
    const { committer, requests } = setup();
    committer.assign([A0, A1]);
    const gone = committer.handOut('a', 1, 0, 9);
    committer.assign([A0]);
    const kept = committer.handOut('a', 0, 0, 0);
    expect(await committer.ack(gone)).toBe('skipped');
    expect(await committer.ack(kept)).toBe('committed');
    expect(await committer.ack(committer.handOut('a', 0, 1, 1), false)).toBe('skipped');
    // Nor one this generation does not own at all.
    expect(await committer.ack(committer.handOut('b', 0, 0, 0))).toBe('skipped');
    expect(requests).toEqual([['a:0@1']]);
    expect(committer.durable()).toEqual({ 'a:1': 10, 'a:0': 2, 'b:0': 1 });
  });

  it('offsets acked but not sent when a new generation begins are not sent', async () => {
    const { committer, requests, holdRequests } = setup();
    committer.assign([A0, A1]);
    const t1 = committer.handOut('a', 0, 0, 9);
    const t2 = committer.handOut('a', 1, 0, 9);
    const release = holdRequests();
    const seen = track(committer.ack(t1), committer.ack(t2));
    await tick();
    committer.assign([A0, A1]);
    await tick();
    expect(seen).toEqual(['pending', 'skipped']);
    release();
    await committer.idle();
    expect(seen).toEqual(['committed', 'skipped']);
    expect(requests).toEqual([['a:0@10']]);
  });

  it('refuses offsets handed out out of order: at or below the last handed out, below a restored position, or an empty range', () => {
    const { committer } = setup();
    committer.restore({ 'a:0': 10 });
    expect(() => committer.handOut('a', 0, 5, 9)).toThrow(/out of order/);
    committer.handOut('a', 0, 10, 12);
    expect(() => committer.handOut('a', 0, 12, 13)).toThrow(/out of order/);
    expect(() => committer.handOut('a', 0, 15, 14)).toThrow(/out of order/);
    committer.handOut('a', 0, 14, 14); // a gap (compaction, a transaction marker) is fine
    committer.handOut('b', 0, 0, 0);
  });

  it("commitAhead commits a previous run's position for assigned partitions, never behind what this generation commits", async () => {
    const { committer, requests } = setup();
    committer.restore({ 'a:0': 5, 'a:1': 7 });
    expect(committer.durable()).toEqual({ 'a:0': 5, 'a:1': 7 });
    committer.assign([A0, A1]);
    expect(await committer.ack(committer.handOut('a', 0, 5, 9))).toBe('committed');
    const ahead = await committer.commitAhead([
      { topic: 'a', partition: 0, offset: '5' },
      { topic: 'a', partition: 1, offset: '7' },
      { topic: 'b', partition: 0, offset: '3' },
    ]);
    expect(ahead).toEqual({ outcome: 'committed', offsets: [{ topic: 'a', partition: 1, offset: '7' }] });
    expect(await committer.commitAhead([{ topic: 'a', partition: 1, offset: '7' }])).toEqual({ outcome: 'skipped', offsets: [] });
    expect(requests).toEqual([['a:0@10'], ['a:1@7']]);
    // Nor does an ack's commit go back behind it.
    committer.assign([A0, A1, B0]);
    await committer.commitAhead([{ topic: 'b', partition: 0, offset: '50' }]);
    expect(await committer.ack(committer.handOut('b', 0, 20, 29))).toBe('committed');
    expect(requests.at(-1)).toEqual(['b:0@50']);
  });

  it('idle() waits for the request in flight', async () => {
    const { committer, holdRequests } = setup();
    committer.assign([A0]);
    const release = holdRequests();
    const acked = track(committer.ack(committer.handOut('a', 0, 0, 0)));
    const idle = committer.idle();
    let done = false;
    void idle.then(() => (done = true));
    await tick();
    expect(done).toBe(false);
    release();
    await idle;
    expect(acked).toEqual(['committed']);
  });
});
