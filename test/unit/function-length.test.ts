import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/cli.js';

// Issue #14: no function over ~80 lines without its reason written beside it
// (`// long: <reason>` on the line before). scripts/long-functions.mjs finds them with swc.

const SCRIPT = path.join(ROOT, 'scripts', 'long-functions.mjs');

interface Found {
  file: string;
  name: string;
  start: number;
  end: number;
  lines: number;
  reason?: string;
}

function run(args: string[], cwd = ROOT): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [SCRIPT, ...args], { cwd, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

describe('function length', () => {
  it('no function in src/ is over 80 lines without a `// long: <reason>` on the line before', () => {
    const r = run(['--json', 'src']);
    expect(r.stderr).toBe('');
    const { max, functions } = JSON.parse(r.stdout) as { max: number; functions: Found[] };
    expect(max).toBe(80);
    const unexplained = functions.filter((f) => f.reason === undefined);
    expect(
      unexplained.map((f) => `${f.file}:${f.start} ${f.name} is ${f.lines} lines`),
      'split these, or write `// long: <reason>` on the line before',
    ).toEqual([]);
    // The exit code agrees with the list.
    expect(run(['src']).code).toBe(unexplained.length > 0 ? 1 : 0);
  });

  describe('scripts/long-functions.mjs', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-fnlen-'));
    afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
    const body = (n: number) => Array.from({ length: n }, (_, i) => `  const v${i} = ${i}; // é`).join('\n');
    const write = (name: string, text: string) => {
      fs.writeFileSync(path.join(dir, name), text);
      return path.join(dir, name);
    };

    it('finds long declarations, methods, constructors and arrow functions, with their names and lines', () => {
      const file = write(
        'kinds.ts',
        [
          `export function declared(): void {\n${body(9)}\n}`, // lines 1-11
          `class Box {\n  constructor() {\n${body(9)}\n  }\n  method(): void {\n${body(9)}\n  }\n}`, // 12-35
          `const arrow = (): void => {\n${body(9)}\n};`, // 36-46
          `export const obj = { prop(): void {\n${body(9)}\n} };`, // 47-57
          `function short(): void {\n${body(3)}\n}`, // 58-62
        ].join('\n'),
      );
      const r = run(['--json', '--max', '10', file], dir);
      expect(r.code).toBe(1);
      const { functions } = JSON.parse(r.stdout) as { functions: Found[] };
      expect(functions.map((f) => [f.name, f.start, f.lines])).toEqual([
        ['declared', 1, 11],
        ['Box.constructor', 13, 11],
        ['Box.method', 24, 11],
        ['arrow', 36, 11],
        ['prop', 47, 11],
      ]);
      expect(functions[0].file).toBe('kinds.ts');
    });

    it('passes a long function whose line before gives the reason, and fails one without', () => {
      const explained = write('explained.ts', `// long: one table of cases, kept together\nfunction big(): void {\n${body(20)}\n}\n`);
      const ok = run(['--max', '10', explained], dir);
      expect(ok.code, ok.stdout + ok.stderr).toBe(0);
      expect(ok.stdout).toContain('explained.ts:2 big: 22 lines (long: one table of cases, kept together)');

      // A reason two lines up, or an empty one, does not count.
      const far = write('far.ts', `// long: too far away\n\nfunction big(): void {\n${body(20)}\n}\n`);
      const empty = write('empty.ts', `// long:\nfunction big(): void {\n${body(20)}\n}\n`);
      const bad = run(['--max', '10', far, empty], dir);
      expect(bad.code).toBe(1);
      expect(bad.stdout).toContain('empty.ts:2 big: 22 lines\n');
      expect(bad.stdout).toContain('far.ts:3 big: 22 lines\n');
      expect(bad.stdout).toContain('2 function(s) over 10 lines, 2 without a `// long: <reason>` on the line before');

      // At the limit is not over it.
      expect(run(['--max', '22', far], dir).code).toBe(0);
    });

    it('says what is wrong with its arguments or an unparsable file', () => {
      expect(run(['--max', 'ten', dir], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('--max: expected a whole number of lines >= 1, got ten') });
      expect(run(['--nope'], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('unknown option --nope') });
      expect(run([path.join(dir, 'missing')], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('no such file or directory') });
      const broken = write('broken.ts', 'function (: {\n');
      expect(run([broken], dir)).toMatchObject({ code: 2, stderr: expect.stringContaining('cannot parse') });
    });
  });
});
