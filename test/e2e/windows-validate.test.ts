import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { query, sluiceAsync, tempDir, writeFiles } from '../helpers/cli.js';

// `sluice validate` on windowed models, through the CLI as a user runs it: a valid windowed
// project passes; a bad `window:` block is refused naming config/models.yml, its line and the
// key path; a windowed model the engine cannot run is refused naming the model's file and why.

const root = tempDir('sluice-windows-validate-');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const PER_MINUTE = `-- events per user per minute
SELECT user_id,
       TUMBLE_START(ts, INTERVAL '1' MINUTE) AS minute,
       count(*) AS n,
       sum(v) AS total
FROM incoming
GROUP BY user_id, TUMBLE(ts, INTERVAL '1' MINUTE)
`;

const SESSIONS = `SELECT user_id, SESSION_START(ts, INTERVAL '90' SECOND) AS s, count(*) AS n
FROM incoming
GROUP BY user_id, SESSION(ts, INTERVAL '90' SECOND)
`;

/** Two users' events, one every minute from 00:00:10, alternating. */
function events(): string {
  const lines = [];
  for (let i = 0; i < 6; i++) lines.push(JSON.stringify({ user_id: `u${i % 2}`, ts: `2026-01-01T00:0${i}:10Z`, v: i }));
  return `${lines.join('\n')}\n`;
}

/** A project named `name` with a file source, a parquet sink and the given models and config/models.yml. */
function project(name: string, files: Record<string, string>): string {
  const p = path.join(root, name);
  writeFiles(p, {
    'config/sources.yml': 'source:\n  type: file\n  path: data\n',
    'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
    'data/events.ndjson': events(),
    ...files,
  });
  return p;
}

/** Runs the CLI in the project's directory, so that it shows the project's files by their relative paths. */
function cli(p: string, ...args: string[]) {
  return sluiceAsync([...args, '--project', '.'], { cwd: p, timeout: 60_000 });
}

describe('sluice validate: windowed models', () => {
  it('a windowed model with its window: block validates, and runs to the windows plain SQL gives', async () => {
    const p = project('valid', {
      'config/models.yml': 'overrides:\n  per_minute:\n    window:\n      lateness: 10 seconds\n      idle_timeout: 1m\n      late: drop\n      max_groups_per_window: 100\n',
      'models/per_minute.sql': PER_MINUTE,
    });
    const v = await cli(p, 'validate');
    expect(v.stderr).toBe('');
    expect(v.code).toBe(0);
    expect(v.stdout).toBe('ok: project valid: 1 model(s) [per_minute], source default (file), sink default (parquet)\n');

    const r = await cli(p, 'run', '--port', '0');
    expect(r.code, r.stderr).toBe(0);
    const rows = await query(
      `SELECT user_id, minute::VARCHAR AS minute, n::INTEGER AS n, total::INTEGER AS total FROM read_parquet('${path.join(p, 'output', 'per_minute')}/*.parquet') ORDER BY minute`,
    );
    expect(rows).toEqual([0, 1, 2, 3, 4, 5].map((i) => ({ user_id: `u${i % 2}`, minute: `2026-01-01 00:0${i}:00`, n: 1, total: i })));
  });

  // Each window: block below has its bad key on line 7, after keys that are fine.
  it.each([
    [
      'a duration that is not one',
      "lateness: 'ten seconds'",
      `overrides.per_minute.window.lateness: "ten seconds" is not a duration: a number of seconds, or a number and a unit (ms, s, m, h, d), such as '10 seconds'`,
    ],
    ['an unknown key', 'latenes: 10 seconds', 'overrides.per_minute.window.latenes: unknown key "latenes" (did you mean "lateness"?)'],
    ['an unknown late policy', 'late: later', 'overrides.per_minute.window.late: Invalid option: expected one of "drop"|"dlq"|"update"|"reopen"'],
  ])('a window: block with %s is refused with file, line and key', async (name, bad, message) => {
    const p = project(name.replaceAll(' ', '-'), {
      'config/models.yml': `# settings of the windowed model\noverrides:\n  per_minute:\n    description: events per user per minute\n    window:\n      idle_timeout: 30 seconds\n      ${bad}\n`,
      'models/per_minute.sql': PER_MINUTE,
    });
    const v = await cli(p, 'validate');
    expect(v.code).toBe(2);
    expect(v.stdout).toBe('');
    expect(v.stderr).toBe(`error: invalid project (1 problem):\n  config/models.yml:7: ${message}\n`);
  });

  it('a windowed model that joins two relations is refused, naming its file and why', async () => {
    const p = project('join', {
      'models/names.sql': 'SELECT user_id AS id, upper(user_id) AS name FROM incoming\n',
      'models/per_minute.sql': `-- events per user name per minute
SELECT u.name, TUMBLE_START(e.ts, INTERVAL '1' MINUTE) AS minute, count(*) AS n
FROM incoming AS e
JOIN {{ ref('names') }} AS u ON e.user_id = u.id
GROUP BY u.name, TUMBLE(e.ts, INTERVAL '1' MINUTE)
`,
    });
    const v = await cli(p, 'validate');
    expect(v.code).toBe(2);
    const lines = v.stderr.split('\n');
    expect(lines[0]).toBe('error: invalid project (1 problem):');
    expect(lines[1]).toBe(
      '  models/per_minute.sql: model per_minute groups by a window, but a windowed model reads one relation (incoming, a source or a ref): write the join in a CTE or a stateless model and window over that',
    );
  });

  it('late: update on a SESSION model is accepted (sessions are re-emitted and retracted: windows-session-update.test.ts), and models list shows the policy', async () => {
    const p = project('late-update-sessions', {
      'config/models.yml': 'overrides:\n  sessions:\n    window:\n      late: update\n      allowed_lateness: 2 minutes\n',
      'models/sessions.sql': SESSIONS,
    });
    const v = await cli(p, 'validate');
    expect(v.stderr).toBe('');
    expect(v.code).toBe(0);
    const list = await cli(p, 'models', 'list');
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/sessions .*SESSION\(ts, INTERVAL '90' SECOND\) per user_id .* late: update · allowed_lateness 2 minutes/);
  });

  it('window settings on a model without a window, a hop whose slide is over its size, and a bound whose arguments differ from the window are refused', async () => {
    const p = project('more-refusals', {
      'config/models.yml': 'overrides:\n  plain:\n    window:\n      late: drop\n',
      'models/plain.sql': 'SELECT user_id, v FROM incoming\n',
      'models/hop.sql': "SELECT HOP_END(ts, INTERVAL '5' MINUTE, INTERVAL '1' MINUTE) AS e, count(*) AS n FROM incoming GROUP BY HOP(ts, INTERVAL '5' MINUTE, INTERVAL '1' MINUTE)\n",
      'models/bounds.sql': "SELECT TUMBLE_START(ts, INTERVAL '2' MINUTE) AS s, count(*) AS n FROM incoming GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)\n",
    });
    const v = await cli(p, 'validate');
    expect(v.code).toBe(2);
    expect(v.stderr).toContain("  models/bounds.sql: model bounds groups by a window, but TUMBLE_START must repeat the arguments of the model's TUMBLE(...)\n");
    expect(v.stderr).toContain("  models/hop.sql: model hop: a hopping window's size must be at least its slide\n");
    expect(v.stderr).toContain('  config/models.yml:3: overrides.plain.window: model plain has no window (GROUP BY TUMBLE, HOP, SESSION or time_bucket): its window settings would do nothing\n');
  });

  it('a windowed model refuses data tests with on_failure: dlq and schema contracts, saying why', async () => {
    const p = project('tests-and-contracts', {
      'config/models.yml':
        'overrides:\n  per_minute:\n    columns:\n      - { name: n, tests: [{ range: { min: 1, on_failure: dlq } }] }\n  typed:\n    contract: { new_columns: freeze }\n    columns:\n      - { name: n, type: BIGINT }\n',
      'models/per_minute.sql': PER_MINUTE,
      'models/typed.sql': "SELECT count(*) AS n FROM incoming GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)\n",
    });
    // (a stateless model's dlq test beside a windowed model of the same source: see the next test)
    const v = await cli(p, 'validate');
    expect(v.code).toBe(2);
    expect(v.stderr).toMatch(/config\/models\.yml:4: data test \S+ of windowed model per_minute: on_failure: dlq needs a row's message, and a window's row has many; use warn or fail/);
    expect(v.stderr).toMatch(/model typed is windowed: schema contracts \(overrides\.typed\.contract, typed columns\) are not applied to windowed models yet/);
  });

  it('a data test with on_failure: dlq on a stateless model is refused beside a windowed model of the same source (the message would stay in the windows)', async () => {
    const p = project('dlq-beside-windows', {
      'config/models.yml': 'overrides:\n  plain:\n    columns:\n      - { name: v, tests: [{ range: { min: 0, on_failure: dlq } }] }\n',
      'models/per_minute.sql': PER_MINUTE,
      'models/plain.sql': 'SELECT user_id, v FROM incoming\n',
    });
    const v = await cli(p, 'validate');
    expect(v.code).toBe(2);
    expect(v.stderr).toMatch(/config\/models\.yml:4: data test \S+ of model plain: on_failure: dlq is not supported yet beside a windowed model of the same source \(per_minute\)/);
  });
  it('window_state (several workers) is refused where workers could not give what one worker gives: a source not read in partitions, a window over every key, a windowed model over another', async () => {
    const p = project('window-state', {
      'sluice.yml': 'name: ws\n# shared state\nwindow_state:\n  postgres: postgres://127.0.0.1:5432/test\n',
      'models/per_minute.sql': PER_MINUTE,
      'models/all_users.sql': "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS minute, count(*) AS n FROM incoming GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)\n",
      'models/per_hour.sql': "SELECT user_id, TUMBLE_START(minute, INTERVAL '1' HOUR) AS hour, sum(n) AS n FROM {{ ref('per_minute') }} GROUP BY user_id, TUMBLE(minute, INTERVAL '1' HOUR)\n",
    });
    const v = await cli(p, 'validate');
    expect(v.code).toBe(2);
    expect(v.stderr).toContain("sluice.yml:3: window_state: window_state moves a partition's window state between the workers of a consumer group; source default (file) is not read in partitions");
    expect(v.stderr).toContain('models/all_users.sql: model all_users groups by the window alone: with window_state each worker would emit its own partial windows');
    expect(v.stderr).toContain('models/per_hour.sql: model per_hour reads windowed model per_minute: with window_state a windowed model cannot read another one yet');
    expect(v.stderr).not.toContain('models/per_minute.sql');
    // Without window_state the same models are fine for one worker.
    fs.rmSync(path.join(p, 'sluice.yml'));
    const ok = await cli(p, 'validate');
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
  });
});
