import fs from 'node:fs';
import path from 'node:path';
import type { DeadLetter } from '../../src/connectors/types.js';
import { DLQ_FILE } from '../../src/connectors/file/file-dlq.js';

/** The records of a directory DLQ (file and generator sources), in order; [] while it has none. */
export function deadLetters(dlqDir: string): DeadLetter[] {
  const f = path.join(dlqDir, DLQ_FILE);
  if (!fs.existsSync(f)) return [];
  return fs
    .readFileSync(f, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as DeadLetter);
}

/** The dead letters of a project whose source dead-letters to `.sluice/dlq` (the default beside the WAL). */
export function projectDeadLetters(projectDir: string): DeadLetter[] {
  return deadLetters(path.join(projectDir, '.sluice', 'dlq'));
}
