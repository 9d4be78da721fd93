import path from 'node:path';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

// The order the test files start in (vitest.config.ts `sequence.sequencer`). The suite is
// CPU-bound on two workers, and each worker takes the next file of this list when it is free:
// a long file that starts late leaves the other worker idle at the end, so the longest files
// go first and the short ones fill in at the end. A file also should not start beside one that
// holds a machine-wide lock it needs for its whole run (test/helpers/machine-lock.ts), or it
// waits doing nothing.
//
// FIRST puts the two files that stop PostgreSQL beside files that do not use it: postgres-outage
// (half a minute of waiting, with the server down) beside windows-kafka (the longest, CPU-heavy),
// then windows-workers (its outage test near its end) on the same worker, beside windows-kafka
// and windows. Both are done before most of the files that need PostgreSQL up start.

/** Seconds each file took under `npm test` on a 2-core machine (rounded; only the order matters). */
const DURATION_S: Record<string, number> = {
  'test/e2e/windows-kafka.test.ts': 120,
  'test/e2e/windows-workers.test.ts': 80,
  'test/e2e/windows.test.ts': 75,
  'test/e2e/joins-kafka.test.ts': 190,
  'test/e2e/joins-two-sources.test.ts': 25,
  'test/e2e/windows-session-update.test.ts': 66,
  'test/e2e/views.test.ts': 44,
  'test/e2e/joins.test.ts': 20,
  'test/e2e/handlers.test.ts': 20,
  'test/e2e/handler-pool.test.ts': 90,
  'test/e2e/handler-kafka.test.ts': 15,
  'test/e2e/dedup.test.ts': 20,
  'test/e2e/kafka.test.ts': 61,
  'test/e2e/nats.test.ts': 59,
  'test/e2e/multi-source.test.ts': 55,
  'test/e2e/rabbitmq.test.ts': 55,
  'test/e2e/crash.test.ts': 52,
  'test/e2e/redis-streams.test.ts': 46,
  'test/e2e/postgres-outage.test.ts': 45,
  'test/e2e/cli.test.ts': 44,
  'test/e2e/kafka-sink-contract.test.ts': 44,
  'test/e2e/postgres-sink.test.ts': 44,
  'test/e2e/s3-sink.test.ts': 44,
  'test/e2e/http-sink.test.ts': 39,
  'test/e2e/redis-sink.test.ts': 37,
  'test/e2e/plan-brokers.test.ts': 25,
  'test/e2e/run.test.ts': 24,
  'test/e2e/nats-sink.test.ts': 21,
  'test/e2e/windows-validate.test.ts': 21,
  'test/e2e/references.test.ts': 20,
  'test/e2e/batch-bytes.test.ts': 19,
  'test/e2e/jsonl-contract.test.ts': 19,
  'test/e2e/contracts.test.ts': 18,
  'test/e2e/generator-contract.test.ts': 18,
  'test/e2e/mysql-sink.test.ts': 17,
  'test/e2e/sink-policy.test.ts': 15,
  'test/fuzz/decode.fuzz.test.ts': 15,
  'test/e2e/rabbitmq-sink.test.ts': 14,
  'test/e2e/data-tests.test.ts': 13,
  'test/e2e/file-contract.test.ts': 12,
  'test/e2e/csv-contract.test.ts': 11,
  'test/e2e/file-sinks.test.ts': 11,
  'test/e2e/parquet-contract.test.ts': 11,
  'test/e2e/hostile-input.test.ts': 10,
  'test/e2e/targets.test.ts': 10,
  'test/fuzz/config.fuzz.test.ts': 10,
  'test/e2e/example-enrichment.test.ts': 8,
  'test/e2e/example-payments.test.ts': 6,
  'test/e2e/example-documents.test.ts': 20,
  'test/e2e/lineage.test.ts': 8,
  'test/e2e/docs.test.ts': 5,
  'test/e2e/full-disk.test.ts': 5,
  'test/e2e/heap.test.ts': 5,
  'test/e2e/example-clickstream.test.ts': 1,
};

/** Started first, in this order (see above). */
const FIRST = ['test/e2e/postgres-outage.test.ts', 'test/e2e/windows-kafka.test.ts', 'test/e2e/windows-workers.test.ts', 'test/e2e/windows.test.ts'];

/**
 * Files that hold a machine-wide lock for their whole run: a file using the same service
 * should not start beside them (it would wait for the lock, its worker idle).
 */
const HOLDS: Record<string, string> = {
  'test/e2e/postgres-outage.test.ts': 'postgres',
  // Not for its whole run, but its outage test keeps PostgreSQL's users waiting.
  'test/e2e/windows-workers.test.ts': 'postgres',
  'test/e2e/nats-sink.test.ts': 'nats',
  'test/e2e/rabbitmq-sink.test.ts': 'rabbitmq',
};
/** Files that take those locks for some of their tests. */
const USES: Record<string, string[]> = {
  'test/e2e/multi-source.test.ts': ['postgres', 'nats'],
  'test/e2e/plan-brokers.test.ts': ['postgres', 'nats', 'rabbitmq'],
  'test/e2e/postgres-sink.test.ts': ['postgres'],
  'test/e2e/references.test.ts': ['postgres'],
  'test/e2e/example-enrichment.test.ts': ['postgres'],
  'test/e2e/example-payments.test.ts': ['postgres'],
  'test/e2e/example-documents.test.ts': ['postgres'],
  'test/e2e/views.test.ts': ['postgres'],
  'test/e2e/windows-session-update.test.ts': ['postgres'],
  'test/e2e/nats.test.ts': ['nats'],
  'test/e2e/batch-bytes.test.ts': ['nats', 'rabbitmq'],
  'test/e2e/rabbitmq.test.ts': ['rabbitmq'],
};

const locks = (f: string): string[] => [...(HOLDS[f] ? [HOLDS[f]] : []), ...(USES[f] ?? [])];
const clash = (a: string, b: string): boolean => (HOLDS[a] !== undefined && locks(b).includes(HOLDS[a])) || (HOLDS[b] !== undefined && locks(a).includes(HOLDS[b]));

export default class LongestFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const root = this.ctx.config.root;
    const rel = (f: TestSpecification) => path.relative(root, f.moduleId).split(path.sep).join('/');
    // A file not listed above (a new one): its last run's duration in vitest's cache, else it
    // goes right after FIRST (it might be long, and a long file must not start last).
    const seconds = (f: TestSpecification): number => {
      const r = rel(f);
      if (r in DURATION_S) return DURATION_S[r];
      const cached = this.ctx.cache.getFileTestResults(`${f.project.name}:${r}`)?.duration;
      if (cached !== undefined) return cached / 1000;
      return r.startsWith('test/unit/') ? 1 : Number.POSITIVE_INFINITY;
    };
    const first = FIRST.flatMap((r) => files.filter((f) => rel(f) === r));
    const rest = files.filter((f) => !first.includes(f)).sort((a, b) => seconds(b) - seconds(a) || rel(a).localeCompare(rel(b)));

    // Hand the files out as the workers would (each to the first free one, by the durations
    // above), taking the next file that does not clash with what the other workers run.
    const workers = Math.max(1, Number(this.ctx.config.maxWorkers) || 1);
    const running: { file: string; until: number }[] = [];
    const order: TestSpecification[] = [];
    const queue = [...first, ...rest];
    let now = 0;
    while (queue.length > 0) {
      if (running.length >= workers) {
        running.sort((a, b) => a.until - b.until);
        now = running.shift()!.until;
      }
      const i = first.includes(queue[0])
        ? 0
        : Math.max(
            0,
            queue.findIndex((f, k) => k < 4 && running.every((x) => !clash(rel(f), x.file))),
          );
      const [next] = queue.splice(i, 1);
      const s = seconds(next);
      running.push({ file: rel(next), until: now + (Number.isFinite(s) ? s : 60) });
      order.push(next);
    }
    return order;
  }
}
