import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { sluice, tempDir, writeFiles } from '../helpers/cli.js';
import { readWalState } from '../helpers/wal.js';
import {
  contractOrders,
  expectDlqRouting,
  expectGracefulStopLosesNothing,
  expectNoLossNoDuplicateAcrossKills,
  expectRedeliveryOfUnacked,
  expectSourceOrder,
  type SourceUnderTest,
} from '../helpers/contract.js';

// The source contract for the file source: the "broker" is an NDJSON file the test appends to,
// tailed with `follow: true`; what is acknowledged is the position committed with the WAL. There
// is no connection to drop, so the reconnect scenario does not apply.

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/** A project tailing data/stream.ndjson, and the file as the source under test. */
function fileProject(): { p: string; src: SourceUnderTest } {
  const root = tempDir('sluice-file-contract-');
  dirs.push(root);
  expect(sluice(['init', 'proj', '--template', 'minimal'], { cwd: root }).code).toBe(0);
  const p = path.join(root, 'proj');
  fs.rmSync(path.join(p, 'data'), { recursive: true, force: true });
  const file = path.join(p, 'data/stream.ndjson');
  writeFiles(p, {
    'config/sources.yml': 'source:\n  type: file\n  path: data/*.ndjson\n  follow: true\n  poll_interval_ms: 50\n  batch_size: 200\n  batch_timeout_ms: 200\n  dlq: .sluice/dlq\n',
    'data/stream.ndjson': '',
  });
  let lines = 0;
  const src: SourceUnderTest = {
    redelivers: false,
    async put(payloads) {
      fs.appendFileSync(file, payloads.map((x) => `${x}\n`).join(''));
      lines += payloads.length;
    },
    // Drained: the position committed with the WAL covers every line put.
    async drained() {
      try {
        const state = readWalState(path.join(p, '.sluice/wal'));
        return (state.position?.ordinal ?? 0) >= lines;
      } catch {
        return false;
      }
    },
  };
  return { p, src };
}

describe('file source contract', () => {
  it('source order kept; a graceful stop mid-stream loses and repeats nothing', async () => {
    for (const [check, n] of [
      [expectSourceOrder, 3000],
      [expectGracefulStopLosesNothing, 20_000],
    ] as const) {
      const { p, src } = fileProject();
      await src.put(contractOrders(n));
      await check(p, n, () => src.drained());
    }
  }, 120_000);

  it('poison lines go to the DLQ with stage and error, good ones to the output', async () => {
    const { p, src } = fileProject();
    await expectDlqRouting(p, src);
  });

  it('killed before committing a batch: the restarted worker reads it again from the committed position, each once', async () => {
    const { p, src } = fileProject();
    await expectRedeliveryOfUnacked(p, src);
  });

  it('SIGKILLed 10 times while lines are waiting: none lost, no duplicate with dedupe_key', async () => {
    const { p, src } = fileProject();
    const N = 6000;
    await src.put(contractOrders(N));
    await expectNoLossNoDuplicateAcrossKills(p, N, () => src.drained());
  }, 240_000);
});
