import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect } from 'vitest';
import { sluice, tempDir, writeFiles } from './cli.js';

/**
 * The showcase project `sluice init` scaffolds (sources orders, refunds; models orders,
 * purchases, large_orders (ref orders, config(sink='alerts')), refunds; sinks lake, alerts),
 * made once for the calling test file: `dir()` is where it is once the file's tests run, and
 * `variant(files)` a copy with some files replaced.
 */
export function showcase(): { dir: () => string; variant: (files: Record<string, string>) => string } {
  let root = '';
  beforeAll(() => {
    root = tempDir();
    expect(sluice(['init', 'shop'], { cwd: root }).code).toBe(0);
  });
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
  const dir = () => path.join(root, 'shop');
  return {
    dir,
    variant(files) {
      const d = tempDir();
      fs.cpSync(dir(), d, { recursive: true });
      writeFiles(d, files);
      return d;
    },
  };
}
