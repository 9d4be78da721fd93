import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/cli.js';

// The layers of src/ (docs/architecture.md), enforced: dependency-cruiser checks every import,
// type-only ones included, against .dependency-cruiser.cjs (no import of a layer above, no cycle).

describe('layers', () => {
  it('no module imports a layer above its own, and there is no import cycle', () => {
    const bin = path.join(ROOT, 'node_modules', '.bin', 'depcruise');
    const r = spawnSync(bin, ['src', '--config', '.dependency-cruiser.cjs', '--output-type', 'err'], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
    expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
    // It looked at the sources (a parser that cannot read TypeScript would find nothing to check).
    const m = /\((\d+) modules, (\d+) dependencies cruised\)/.exec(r.stdout);
    expect(Number(m?.[1])).toBeGreaterThan(100);
  });
});
