import fs from 'node:fs';
import path from 'node:path';
import { afterAll } from 'vitest';
import { sluiceAsync, tempDir, writeFiles } from '../helpers/cli.js';
import { sourceContract, type SourceUnderTest } from '../helpers/source-contract.js';
import { tryWalState } from '../helpers/wal.js';

// The source contract for the file source: the "broker" is an NDJSON file the test appends to,
// tailed with `follow: true`; what is acknowledged is the position committed with the WAL.

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/** A project tailing data/stream.ndjson, and the file as the source under test. */
async function fileSource(): Promise<SourceUnderTest> {
  const root = tempDir('sluice-file-contract-');
  dirs.push(root);
  const init = await sluiceAsync(['init', 'proj', '--template', 'minimal'], { cwd: root });
  if (init.code !== 0) throw new Error(`sluice init failed: ${init.stderr}`);
  const p = path.join(root, 'proj');
  fs.rmSync(path.join(p, 'data'), { recursive: true, force: true });
  const file = path.join(p, 'data/stream.ndjson');
  writeFiles(p, {
    'config/sources.yml': 'source:\n  type: file\n  path: data/*.ndjson\n  follow: true\n  poll_interval_ms: 50\n  batch_size: 200\n  batch_timeout_ms: 200\n  dlq: .sluice/dlq\n',
    'data/stream.ndjson': '',
  });
  let lines = 0;
  return {
    project: p,
    async put(payloads) {
      fs.appendFileSync(file, payloads.map((x) => `${x}\n`).join(''));
      lines += payloads.length;
    },
    // Drained: the position committed with the WAL covers every line put.
    async drained() {
      return (tryWalState(path.join(p, '.sluice/wal'))?.position?.ordinal ?? 0) >= lines;
    },
  };
}

sourceContract('file (follow)', {
  concurrent: true,
  source: fileSource,
  redelivers: false,
  ends: false,
  dlq: { declared: true },
  reconnect: { declared: false, reason: 'a file has no connection to drop: the source reads the local file system' },
  lag: { declared: false, reason: 'the file source reports no lag (its Source has no lag())' },
});
