import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { orderMessage } from '../../src/connectors/generator/generator-source.js';
import { query, sluiceAsync, tempDir, writeFiles } from '../helpers/cli.js';
import { CONTRACT_SEED, sourceContract, type ContractCase, type SourceUnderTest } from '../helpers/source-contract.js';
import { tryWalState } from '../helpers/wal.js';

// The source contract for the generator: deterministic (order n is the same at every start) and
// finite (`count`), so its worker stops by itself at the end of its input. "Putting" orders is
// raising `count` before a worker starts; the generator can only make its own orders, so a put
// of anything else is refused.

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

async function generatorSource(scenario: ContractCase): Promise<SourceUnderTest> {
  const root = tempDir('sluice-generator-contract-');
  dirs.push(root);
  const init = await sluiceAsync(['init', 'proj', '--template', 'minimal'], { cwd: root });
  if (init.code !== 0) throw new Error(`sluice init failed: ${init.stderr}`);
  const p = path.join(root, 'proj');
  // Paced while being killed, so that each worker has work left when its kill comes.
  const rate = scenario === 'kills' ? 3000 : 0;
  let count = 0;
  return {
    project: p,
    async put(payloads) {
      for (let i = 0; i < payloads.length; i++) {
        if (payloads[i] !== orderMessage(count + i, CONTRACT_SEED)) throw new Error(`the generator cannot make message ${count + i + 1}: ${payloads[i].slice(0, 100)}`);
      }
      count += payloads.length;
      writeFiles(p, { 'config/sources.yml': `source:\n  type: generator\n  count: ${count}\n  seed: ${CONTRACT_SEED}\n  rate: ${rate}\n  batch_size: 200\n  batch_timeout_ms: 200\n` });
    },
    // Drained: the position committed with the WAL is the end of the input.
    async drained() {
      return count > 0 && (tryWalState(path.join(p, '.sluice/wal'))?.position?.ordinal ?? 0) >= count;
    },
  };
}

sourceContract('generator', {
  concurrent: true,
  source: generatorSource,
  redelivers: false,
  ends: true,
  dlq: {
    declared: false,
    reason:
      'the generator makes only its own orders (and, with invalid_every, unparseable ones): it cannot carry the type conflict and the failing CAST the case puts; its invalid_every messages are checked below',
  },
  reconnect: { declared: false, reason: 'the generator has no connection: it makes its messages in the process' },
  lag: { declared: false, reason: 'the generator reports no lag (its Source has no lag())' },
});

// The contract's DLQ case needs poison of the test's choosing; what the generator can make is
// unparseable messages (invalid_every), and those must reach its DLQ like any source's.
describe('generator', () => {
  it('invalid_every: every Nth message is unparseable and goes to the DLQ (stage decode, with its ordinal), the rest to the output, and the run ends by itself', async () => {
    const root = tempDir('sluice-generator-dlq-');
    dirs.push(root);
    const init = await sluiceAsync(['init', 'proj', '--template', 'minimal'], { cwd: root });
    expect(init.code, init.stderr).toBe(0);
    const p = path.join(root, 'proj');
    writeFiles(p, {
      'config/sources.yml': `source:\n  type: generator\n  count: 300\n  seed: ${CONTRACT_SEED}\n  invalid_every: 50\n  batch_size: 100\n`,
      'config/sinks.yml': 'sink:\n  type: parquet\n  path: ./output\n',
      'config/models.yml': 'max_age_seconds: 300\n',
      'models/orders.sql': 'SELECT incoming.order_id FROM incoming\n',
    });
    fs.rmSync(path.join(p, 'models/purchases.sql'), { force: true });
    const run = await sluiceAsync(['run', '--project', p, '--port', '0']);
    expect(run.code, run.stderr).toBe(0);
    const bad = [50, 100, 150, 200, 250, 300];
    const rows = await query(`SELECT order_id FROM read_parquet('${p}/output/orders/*.parquet') ORDER BY order_id`);
    expect(rows.map((r) => Number(r.order_id))).toEqual(Array.from({ length: 300 }, (_, i) => i + 1).filter((id) => !bad.includes(id)));
    const inspect = await sluiceAsync(['dlq', 'inspect', '--project', p, '--format', 'json', '--limit', '100']);
    expect(inspect.code, inspect.stderr).toBe(0);
    const dead = JSON.parse(inspect.stdout) as { payload: string; stage: string; error: string; source: Record<string, unknown> }[];
    expect(dead.map((d) => d.payload)).toEqual(bad.map((id) => `{"order_id": ${id}, "user": `));
    for (const [i, d] of dead.entries()) {
      expect(d).toMatchObject({ stage: 'decode', error: expect.stringMatching(/invalid JSON/) });
      expect(d.source).toMatchObject({ ordinal: bad[i] - 1 });
    }
  });
});
