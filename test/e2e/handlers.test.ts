import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT, killRepeatedly, query, sluiceAsync, tempDir, writeFiles } from '../helpers/cli.js';
import { deadLetters } from '../helpers/dlq.js';

// Handlers: TypeScript modules in handlers/, steps of the DAG beside the SQL models, loaded
// with no build step. SQL -> handler -> SQL in one pipeline over a real file source; bad rows
// (an input schema, a throw, an output schema) dead-letter their message with the reason and
// the rest go on; 10 SIGKILLs leave every message's rows in the output exactly once.

const root = tempDir('sluice-handlers-');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** Splits an order of more than 50 into two halves; ids that are multiples of 97 throw; a name "bad" returns a row its output schema refuses. */
const SPLIT = `import { defineHandler, ref, z } from 'sluice';

const Order = z.object({ id: z.number().int(), name: z.string(), amount: z.number() });
const Part = z.object({ id: z.number().int(), part: z.string(), cents: z.number().int(), source: z.string(), raw_bytes: z.number().int() });

export default defineHandler({
  from: ref('clean'),
  input: Order,
  output: Part,
  description: 'splits large orders in two',
  process({ value, raw, source, position }, ctx) {
    if (value.id % 97 === 0) throw new Error(\`order \${value.id} is cursed\`);
    if (value.name === 'BAD') return { id: value.id, part: 'x', cents: 'many' };
    if (value.id === 1) ctx.log.info('first order', { line: position.line });
    const base = { id: value.id, source, raw_bytes: Buffer.byteLength(raw) };
    const cents = Math.round(value.amount * 100);
    if (value.amount <= 50) return { ...base, part: 'whole', cents };
    return [{ ...base, part: 'first', cents: Math.floor(cents / 2) }, { ...base, part: 'second', cents: cents - Math.floor(cents / 2) }];
  },
});
`;

interface Order {
  id: number | string;
  name: string;
  amount: number;
}

function orders(n: number): Order[] {
  const out: Order[] = [];
  for (let i = 1; i <= n; i++) {
    const name = i % 211 === 0 ? 'bad' : `n${i % 7}`;
    // Every 301st id is not an integer: the handler's input schema refuses it.
    out.push({ id: i % 301 === 0 ? i + 0.5 : i, name, amount: (i * 37) % 100 });
  }
  return out;
}

/** What the handler must make of the orders (computed here, apart from its code), and the ids whose messages fail. */
function expected(list: Order[]): { rows: string[]; failed: Map<number, string> } {
  const rows: string[] = [];
  const failed = new Map<number, string>();
  for (const o of list) {
    const id = Number(o.id);
    if (o.amount <= 0) continue; // the SQL model drops it
    if (!Number.isInteger(id)) failed.set(Math.floor(id), 'does not match its input schema');
    else if (id % 97 === 0) failed.set(id, `process() threw: order ${id} is cursed`);
    else if (o.name === 'bad') failed.set(id, 'process() returned a row that does not match its output schema');
    else {
      const raw = Buffer.byteLength(JSON.stringify(o));
      const cents = Math.round(o.amount * 100);
      const parts: [string, number][] =
        o.amount <= 50
          ? [['whole', cents]]
          : [
              ['first', Math.floor(cents / 2)],
              ['second', cents - Math.floor(cents / 2)],
            ];
      for (const [part, c] of parts) rows.push(`${id}|${part}|${c}|default|${raw}`);
    }
  }
  return { rows: rows.sort(), failed };
}

function project(name: string, n: number, batch = 200): { p: string; list: Order[] } {
  const p = path.join(root, name);
  const list = orders(n);
  writeFiles(p, {
    'config/sources.yml': `source:\n  type: file\n  path: data/\n  dlq: .sluice/dlq\n  batch_size: ${batch}\n`,
    'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
    'config/models.yml': 'max_age_seconds: 3600\n',
    'models/clean.sql': 'SELECT id, upper(name) AS name, amount FROM incoming WHERE amount > 0\n',
    'models/big_parts.sql': "SELECT id, part, cents FROM {{ ref('split') }} WHERE part <> 'whole'\n",
    'handlers/split.ts': SPLIT,
    'data/orders.ndjson': `${list.map((o) => JSON.stringify(o)).join('\n')}\n`,
  });
  return { p, list };
}

async function splitRows(p: string): Promise<string[]> {
  const rows = await query(`SELECT id, part, cents, source, raw_bytes FROM read_parquet('${p}/output/split/*.parquet')`);
  return rows.map((r) => `${r.id}|${r.part}|${r.cents}|${r.source}|${r.raw_bytes}`).sort();
}

describe('handlers', () => {
  it.concurrent('validate, models list and compile show a handler; a handler that does not load, or is not one, is an issue naming its file', async () => {
    const { p } = project('listed', 10);
    const v = await sluiceAsync(['validate', '--project', p]);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toMatch(/3 model\(s\) \[clean, big_parts, split\]|\[clean, split, big_parts\]/);
    const list = await sluiceAsync(['models', 'list', '--project', p]);
    expect(list.stdout).toMatch(
      /\nsplit +\| \S*handlers\/split\.ts +\| default +\| default +\| clean +\| handler: code per row of ref clean, input schema, output schema \(id, part, cents, source, raw_bytes\)/,
    );
    const compiled = await sluiceAsync(['compile', '--project', p, '--model', 'split']);
    expect(compiled.stdout).toContain('-- the handler reads:\nSELECT * FROM sluice_model."clean"');
    const lineage = await sluiceAsync(['lineage', '--project', p]);
    expect(lineage.stdout).toMatch(/model clean\n[\s\S]*model split \[handler\]\n[\s\S]*model big_parts/);

    const broken = project('broken', 10).p;
    fs.writeFileSync(path.join(broken, 'handlers/split.ts'), "import { defineHandler } from 'sluice';\nexport default defineHandler({\n  process( {\n});\n");
    fs.writeFileSync(path.join(broken, 'handlers/plain.ts'), 'export default { process: () => null };\n');
    fs.writeFileSync(path.join(broken, 'handlers/lost.ts'), "import { defineHandler, ref } from 'sluice';\n\nexport default defineHandler({\n  from: ref('nope'),\n  process: () => null,\n});\n");
    const b = await sluiceAsync(['validate', '--project', broken]);
    expect(b.code).not.toBe(0);
    expect(b.stderr).toMatch(/handlers\/split\.ts(:\d+)?: cannot load the handler: /);
    expect(b.stderr).toMatch(/handlers\/plain\.ts: its default export is not a handler: write `export default defineHandler/);
    expect(b.stderr).toMatch(/handlers\/lost\.ts:4: ref\('nope'\): no model named "nope"/);
  });

  it.concurrent('SQL -> handler -> SQL: the rows are what the handler makes of each order; bad rows dead-letter their message with the reason', async () => {
    const { p, list } = project('run', 3000);
    const r = await sluiceAsync(['run', '--project', p, '--port', '0'], { timeout: 120_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expect(r.stderr).toMatch(/first order .*handler.*split/);
    const want = expected(list);
    expect(await splitRows(p)).toEqual(want.rows);
    // The SQL model after the handler reads its rows.
    const big = await query(`SELECT count(*) AS n FROM read_parquet('${p}/output/big_parts/*.parquet')`);
    expect(Number(big[0].n)).toBe(want.rows.filter((x) => !x.includes('|whole|')).length);
    // A failed message leaves no row in any model, the SQL model before the handler included.
    const clean = await query(`SELECT count(*) AS n FROM read_parquet('${p}/output/clean/*.parquet')`);
    expect(Number(clean[0].n)).toBe(list.filter((o) => o.amount > 0).length - want.failed.size);
    const dead = deadLetters(path.join(p, '.sluice/dlq'));
    expect(dead.length).toBe(want.failed.size);
    for (const d of dead) {
      const id = Math.floor(JSON.parse(d.payload).id);
      expect(d.stage).toBe('transform');
      expect(d.error).toContain(`handler split: `);
      expect(d.error).toContain(want.failed.get(id));
    }
  });

  it.concurrent('sluice is a library too: runProject() runs a project in the calling process, and the package exports typed handler definitions', async () => {
    const { p, list } = project('library', 500);
    const script = path.join(p, 'run.mjs');
    fs.writeFileSync(
      script,
      `import { runProject } from ${JSON.stringify(path.join(ROOT, 'dist/index.js'))};
const summaries = await runProject({ project: ${JSON.stringify(p)} });
const s = summaries.get('default');
console.log(JSON.stringify({ messages: s.messages, dead: s.deadLettered, rows: s.rows }));
`,
    );
    // Asynchronously: the file's other tests run meanwhile.
    const r = await promisify(execFile)(process.execPath, [script], { encoding: 'utf8', timeout: 120_000 });
    const want = expected(list);
    expect(JSON.parse(r.stdout)).toMatchObject({ messages: 500, dead: want.failed.size, rows: { split: want.rows.length } });
    expect(await splitRows(p)).toEqual(want.rows);
    // What a handler is written against has its types in the package.
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    const types = fs.readFileSync(path.join(ROOT, pkg.exports['.'].types), 'utf8');
    expect(types).toContain('handler-api.js');
    expect(fs.readFileSync(path.join(ROOT, 'dist/project/handler-def.d.ts'), 'utf8')).toMatch(
      /export declare function defineHandler<In = Record<string, unknown>, Out = Record<string, unknown>>\(spec: HandlerSpec<In, Out>\): Handler<In, Out>;/,
    );
  });

  it.concurrent('SIGKILLed 10 times while the handler runs: every message has its rows in the output exactly once', async () => {
    const { p, list } = project('killed', 30_000, 500);
    const kills = await killRepeatedly(['run', '--project', p, '--port', '0'], {}, 10);
    expect(kills).toBe(10);
    const want = expected(list);
    const before = fs.existsSync(path.join(p, 'output/split')) ? (await splitRows(p)).length : 0;
    expect(before).toBeLessThan(want.rows.length); // the kills came while there was work left
    const r = await sluiceAsync(['run', '--project', p, '--port', '0'], { timeout: 240_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expect(await splitRows(p)).toEqual(want.rows);
    expect(deadLetters(path.join(p, '.sluice/dlq')).length).toBe(want.failed.size);
  }, 300_000);
});
