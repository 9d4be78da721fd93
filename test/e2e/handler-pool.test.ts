import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort, httpGet, killRepeatedly, processesUnder, query, sluiceAsync, sluiceBg, tempDir, until, waitExit, writeFiles } from '../helpers/cli.js';
import { deadLetters } from '../helpers/dlq.js';

// Handlers with a subprocess pool: arrange() makes tasks of real programs (sha256sum, sh,
// sleep), run by the pool at most executor.max_executors at once; fan-out -> fan-in with
// onMessageComplete, onWindowComplete; failures (exit codes, timeouts, signals, hooks that
// throw) go to onError or the DLQ; 10 SIGKILLs while tasks run leave every message's rows in
// the output exactly once; onStartup, onReady, periodic tasks and /metrics.

const root = tempDir('sluice-pool-e2e-');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const sha = (s: string) => crypto.createHash('sha256').update(s).digest('hex');

/** Two sha256sum tasks per message (its text, and upper-cased): one row per message, one per window. */
const DIGEST = `import { defineHandler, ref } from 'sluice';

export default defineHandler({
  from: ref('docs'),
  arrange(messages) {
    return messages.flatMap((m) => [
      { args: ['-'], stdin: m.value.text, message: m, metadata: { variant: 'lower' } },
      { args: ['-'], stdin: m.value.text.toUpperCase(), message: m, metadata: { variant: 'upper' } },
    ]);
  },
  onMessageComplete({ message, results }) {
    const hash = (v) => results.find((r) => r.task.metadata.variant === v).stdout.split(' ')[0];
    return { id: message.value.id, lower: hash('lower'), upper: hash('upper'), tasks: results.length };
  },
  onWindowComplete(results, messages) {
    return { id: messages[messages.length - 1].value.id, window_messages: messages.length, window_tasks: results.length };
  },
});
`;

function digestProject(name: string, n: number, batch: number, window: number): { p: string; texts: string[] } {
  const p = path.join(root, name);
  const texts = Array.from({ length: n }, (_, i) => `document ${i} ${'lorem ipsum '.repeat(i % 13)}`);
  writeFiles(p, {
    'config/sources.yml': `source:\n  type: file\n  path: data/\n  dlq: .sluice/dlq\n  batch_size: ${batch}\n`,
    'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
    'config/models.yml': `max_age_seconds: 3600\noverrides:\n  digest:\n    executor:\n      binary_path: /usr/bin/sha256sum\n      max_executors: 2\n      window_size: ${window}\n`,
    'models/docs.sql': 'SELECT id, text FROM incoming\n',
    'handlers/digest.ts': DIGEST,
    'data/docs.ndjson': `${texts.map((text, id) => JSON.stringify({ id, text })).join('\n')}\n`,
  });
  return { p, texts };
}

/** The rows the digest handler must make: one per message, and one per window (batches cut windows too). */
async function digestRows(p: string): Promise<{ messages: string[]; windows: number }> {
  const rows = await query(`SELECT id, lower, upper, tasks, window_messages FROM read_parquet('${p}/output/digest/*.parquet')`);
  return {
    messages: rows
      .filter((r) => r.lower !== null)
      .map((r) => `${r.id}|${r.lower}|${r.upper}|${r.tasks}`)
      .sort(),
    windows: rows.filter((r) => r.window_messages !== null).reduce((n, r) => n + Number(r.window_messages), 0),
  };
}

const expectedDigests = (texts: string[]) => texts.map((t, id) => `${id}|${sha(t)}|${sha(t.toUpperCase())}|2`).sort();

/** One task per message, whose kind says what its process does; onError decides by the failure. */
const TROUBLE = `import { defineHandler, ref } from 'sluice';

const SCRIPTS = {
  ok: 'printf ok',
  exit: 'echo failing >&2; exit 3',
  slow: 'sleep 30',
  flaky: 'if [ -e "$MARK" ]; then printf recovered; else touch "$MARK"; exit 1; fi',
  signal: 'kill -KILL $$',
  hook: 'printf x',
  doomed: 'exit 1',
};

export default defineHandler({
  from: ref('jobs'),
  arrange(messages) {
    if (messages.some((m) => m.value.kind === 'arrange')) throw new Error('cannot arrange this one');
    return messages.map((m) => ({ args: ['-c', SCRIPTS[m.value.kind]], env: { MARK: m.value.mark, API_TOKEN: 'hunter2-secret' }, message: m }));
  },
  onTaskComplete(result) {
    const m = result.task.messages[0];
    if (m.value.kind === 'hook') throw new Error('no rows for hooks');
    return { id: m.value.id, out: result.stdout, attempt: result.task.attempt };
  },
  onError(task, error) {
    const kind = task.messages[0].value.kind;
    if (error.kind === 'timeout') return 'skip';
    if (kind === 'flaky' || kind === 'doomed') return 'retry';
    if (error.kind === 'signal') return [{ args: ['-c', 'printf replaced'], message: task.messages[0] }];
    return 'fail';
  },
});
`;

describe('handlers with a subprocess pool', () => {
  it.concurrent('fan-out -> fan-in: two sha256sum tasks per message make one row per message (onMessageComplete) and one per window (onWindowComplete)', async () => {
    const { p, texts } = digestProject('digest', 120, 50, 7);
    const v = await sluiceAsync(['models', 'list', '--project', p]);
    expect(v.stdout).toMatch(/digest +\| \S+handlers\/digest\.ts .*handler: code per row of ref docs/);
    const r = await sluiceAsync(['run', '--project', p, '--port', '0'], { timeout: 120_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const got = await digestRows(p);
    expect(got.messages).toEqual(expectedDigests(texts));
    expect(got.windows).toBe(texts.length); // every message in exactly one window
  });

  it.concurrent('failed tasks follow onError (retry, skip, replacement) or go to the DLQ with the reason; a hook that throws names itself', async () => {
    const p = path.join(root, 'trouble');
    const kinds = ['ok', 'exit', 'slow', 'flaky', 'signal', 'hook', 'doomed', 'arrange', 'ok'];
    const jobs = kinds.map((kind, id) => ({ id, kind, mark: path.join(p, `mark-${id}`) }));
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data/\n  dlq: .sluice/dlq\n',
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
      'config/models.yml': 'overrides:\n  trouble:\n    executor:\n      binary_path: /bin/sh\n      max_executors: 3\n      task_timeout_seconds: 1\n      window_size: 1\n      max_retries: 2\n',
      'models/jobs.sql': 'SELECT id, kind, mark FROM incoming\n',
      'handlers/trouble.ts': TROUBLE,
      'data/jobs.ndjson': `${jobs.map((j) => JSON.stringify(j)).join('\n')}\n`,
    });
    const r = await sluiceAsync(['run', '--project', p, '--port', '0', '--log-level', 'debug'], { timeout: 120_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const rows = await query(`SELECT id, out, attempt FROM read_parquet('${p}/output/trouble/*.parquet') ORDER BY id`);
    expect(rows.map((x) => [Number(x.id), x.out, Number(x.attempt)])).toEqual([
      [0, 'ok', 1],
      [3, 'recovered', 2], // failed once, retried
      [4, 'replaced', 2], // killed by a signal, replaced by another task
      [8, 'ok', 1],
    ]);
    // The slow one was skipped: no row, no dead letter. The others failed, each with its reason and position.
    const dead = Object.fromEntries(deadLetters(path.join(p, '.sluice/dlq')).map((d) => [JSON.parse(d.payload).kind, d]));
    expect(Object.keys(dead).sort()).toEqual(['arrange', 'doomed', 'exit', 'hook']);
    expect(dead.exit.error).toMatch(/^handler trouble: task trouble-\d+ \(attempt 1\) exited with code 3; stderr: failing$/);
    expect(dead.doomed.error).toMatch(/task trouble-\d+ \(attempt 3\) exited with code 1; no retry left \(executor.max_retries: 2\)/);
    expect(dead.hook.error).toMatch(/^handler trouble: onTaskComplete\(\) threw on task trouble-\d+: no rows for hooks$/);
    expect(dead.arrange.error).toBe('handler trouble: arrange() threw: cannot arrange this one');
    expect(dead.arrange.source).toMatchObject({ file: 'data/jobs.ndjson', line: 8 });
    // The debug log shows each task; a secret-looking env value never.
    expect(r.stderr).toMatch(/DEBUG task handler=trouble task=trouble-\d+ attempt=1 status=timeout/);
    expect(r.stderr).toContain('API_TOKEN":"****"');
    expect(r.stderr).not.toContain('hunter2-secret');
  });

  it.concurrent('a pool misconfigured is refused naming the file and key; onStartup setting a bad value stops the run naming the hook', async () => {
    const p = path.join(root, 'misconfigured');
    const arranges = "import { defineHandler } from 'sluice';\nexport default defineHandler({\n  arrange: (ms) => ms.map((m) => ({ args: [], message: m })),\n  onTaskComplete: () => null,\n});\n";
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data/\n',
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
      'config/models.yml': 'overrides:\n  plain:\n    executor:\n      binary_path: /bin/true\n  missing:\n    executor:\n      binary_path: ./no-such-program\n',
      'models/plain.sql': 'SELECT 1 AS x FROM incoming\n',
      'handlers/missing.ts': arranges,
      'handlers/poolless.ts': arranges,
      'data/one.ndjson': '{"id": 1}\n',
    });
    const v = await sluiceAsync(['validate', '--project', p]);
    expect(v.code).not.toBe(0);
    expect(v.stderr).toMatch(/config\/models\.yml:3: overrides\.plain\.executor: model plain is SQL: a subprocess pool \(executor\) belongs to a handler/);
    expect(v.stderr).toMatch(/config\/models\.yml:6: overrides\.missing\.executor\.binary_path: \S*no-such-program is not a program sluice can run/);
    expect(v.stderr).toMatch(/handlers\/poolless\.ts: handler poolless arranges tasks: give it a subprocess pool in config\/models\.yml \(overrides\.poolless\.executor\.binary_path\)/);

    const q = path.join(root, 'bad-startup');
    writeFiles(q, {
      'config/sources.yml': 'source:\n  type: file\n  path: data/\n',
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
      'config/models.yml': 'overrides:\n  zero:\n    executor:\n      binary_path: /bin/true\n',
      'handlers/zero.ts': arranges.replace('arrange:', 'onStartup: () => ({ maxExecutors: 0 }),\n  arrange:'),
      'data/one.ndjson': '{"id": 1}\n',
    });
    const r = await sluiceAsync(['run', '--project', q, '--port', '0'], { timeout: 60_000 });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('handler zero: onStartup() set maxExecutors to 0, not a positive whole number');
  });

  it.concurrent('SIGKILLed 10 times while tasks run: every message has its row in the output exactly once', async () => {
    const { p, texts } = digestProject('killed', 1200, 100, 20);
    const kills = await killRepeatedly(['run', '--project', p, '--port', '0'], {}, 10);
    expect(kills).toBe(10);
    const before = fs.existsSync(path.join(p, 'output/digest')) ? (await digestRows(p)).messages.length : 0;
    expect(before).toBeLessThan(texts.length); // the kills came while there was work left
    const r = await sluiceAsync(['run', '--project', p, '--port', '0'], { timeout: 240_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const got = await digestRows(p);
    expect(got.messages).toEqual(expectedDigests(texts));
    expect(got.windows).toBe(texts.length);
  }, 300_000);

  it.concurrent('SIGKILLed while its tasks run, sluice leaves no task running: the spawner of its pool kills them at once', async () => {
    const p = path.join(root, 'orphans');
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data/\n',
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
      'config/models.yml': 'overrides:\n  nap:\n    executor:\n      binary_path: /bin/sleep\n      max_executors: 3\n      task_timeout_seconds: 120\n',
      'models/naps.sql': 'SELECT id FROM incoming\n',
      'handlers/nap.ts':
        "import { defineHandler, ref } from 'sluice';\nexport default defineHandler({\n  from: ref('naps'),\n  arrange: (messages) => messages.map((m) => ({ args: ['60'], message: m })),\n  onTaskComplete: (r) => ({ id: r.task.messages[0].value.id }),\n});\n",
      'data/naps.ndjson': `${Array.from({ length: 5 }, (_, id) => JSON.stringify({ id })).join('\n')}\n`,
    });
    const w = sluiceBg(['run', '--project', p, '--port', '0']);
    // The tasks: sleep processes under sluice (children of its pool's spawner).
    const naps = await until(() => (processesUnder(w.pid!, 'sleep').length === 3 ? processesUnder(w.pid!, 'sleep') : undefined), 30_000, 50, 'three tasks running');
    w.kill('SIGKILL');
    await waitExit(w);
    const gone = (pid: number) => !fs.existsSync(`/proc/${pid}`) || fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].startsWith('Z');
    await until(() => naps.every(gone), 5000, 50, 'the tasks to be killed');
  });

  it.concurrent('onStartup tunes the pool, onReady runs once the sinks are connected, a periodic task refreshes while tasks run, /metrics counts tasks and user metrics', async () => {
    const p = path.join(root, 'paced');
    writeFiles(p, {
      'config/sources.yml': 'source:\n  type: file\n  path: data/\n  batch_size: 10\n',
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
      'config/models.yml': 'overrides:\n  paced:\n    executor:\n      binary_path: /bin/sleep\n      max_executors: 8\n',
      'models/ticks.sql': 'SELECT id FROM incoming\n',
      'handlers/paced.ts': `import { defineHandler, periodic, ref } from 'sluice';

const lookup = { version: 0 };
export default defineHandler({
  from: ref('ticks'),
  onStartup(config) {
    return { maxExecutors: 1 };
  },
  onReady(ctx) {
    lookup.version = 1;
    ctx.log.info('lookup loaded');
  },
  periodic: {
    refresh: periodic({ seconds: 0.3 }, (ctx) => {
      lookup.version++;
      ctx.metrics.counter({ name: 'paced_refreshes_total', help: 'lookup refreshes' }).inc();
    }),
  },
  arrange: (messages) => messages.map((m) => ({ args: ['0.1'], message: m })),
  onTaskComplete: (r) => ({ id: r.task.messages[0].value.id, version: lookup.version }),
});
`,
      'data/ticks.ndjson': `${Array.from({ length: 40 }, (_, id) => JSON.stringify({ id })).join('\n')}\n`,
    });
    const port = await freePort();
    const t0 = Date.now();
    const w = sluiceBg(['run', '--project', p, '--port', String(port)]);
    const metrics = await until(async () => {
      const m = await httpGet(`http://127.0.0.1:${port}/metrics`).catch(() => undefined);
      return m && /sluice_handler_tasks_total\{handler="paced",status="ok"\} [1-9]/.test(m.body) && /paced_refreshes_total [1-9]/.test(m.body) ? m.body : undefined;
    }, 30_000);
    expect(metrics).toMatch(/sluice_handler_pool_utilisation\{handler="paced"\} (0|1)/);
    expect(metrics).toMatch(/sluice_handler_hook_duration_seconds_count\{handler="paced",hook="arrange"\} [1-9]/);
    expect(await waitExit(w, 60_000)).toEqual({ code: 0, signal: null });
    // 40 tasks of 0.1 s one at a time (onStartup took max_executors from 8 to 1).
    expect(Date.now() - t0).toBeGreaterThan(4000);
    expect(w.err()).toMatch(/lookup loaded/);
    const rows = await query(`SELECT id, version FROM read_parquet('${p}/output/paced/*.parquet') ORDER BY id`);
    expect(rows.length).toBe(40);
    expect(Number(rows[0].version)).toBeGreaterThanOrEqual(1);
    expect(Number(rows[39].version)).toBeGreaterThan(Number(rows[0].version)); // refreshed while it ran
  });
});
