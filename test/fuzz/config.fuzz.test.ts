import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ConfigError } from '../../src/errors.js';
import { loadProject } from '../../src/project/project-loader.js';
import { scaffold, scaffoldShowcase } from '../../src/cli/init.js';
import { CLI, sluiceAsync } from '../helpers/cli.js';
import { FUZZ_LONG, budget, preview, timed } from './fuzz-budget.js';

// Config files under hostility (issue: "fuzzing as part of the suite"): malformed YAML, wrong
// types, unknown keys, giant files, symbolic links, directories and devices where files belong,
// empty files, bytes that are not UTF-8, NUL bytes, and random mutations of a valid project.
//
// Through the loader (loadProject): it returns a project or throws a ConfigError whose issues
// each name a file of the project (and a line within that file where they give one; a YAML
// syntax error always does); never another exception, and within a time bound.
// Through the CLI (`sluice validate`): exit 2 with the file (and line) on stderr, and no stack
// trace (no line matching /^\s+at /) at the default log level.
//
// Budget: see fuzz-budget.ts (SLUICE_FUZZ_RUNS / SLUICE_FUZZ_SECONDS / SLUICE_FUZZ_SEED).

const PROPERTY_SECONDS = 10;
/** What one load may take, at most (a 20 MB file included). */
const LOAD_MS = 10_000;
const MB = 2 ** 20;

const roots: string[] = [];
afterAll(() => {
  for (const d of roots) fs.rmSync(d, { recursive: true, force: true });
});
function tmp(prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  roots.push(d);
  return d;
}

/** Where an issue must point: a file (its path's end) and its line (a number, any line, or none). */
interface Where {
  file: string;
  line?: number | 'any';
  /** A word the message must hold. */
  says?: RegExp;
}

interface Case {
  name: string;
  /** Spoils a fresh minimal project (scaffold()) in `dir`. */
  make: (dir: string) => void;
  /** The issue expected; undefined: the project must load (hostile but valid). */
  expect?: Where;
  /** Only the CLI can tell (the loader accepts it; DuckDB refuses it). */
  cliOnly?: boolean;
  /** Through the CLI in `npm test` too (each CLI run is a Node process: the rest run when asked for longer, see fuzz-budget.ts). */
  cli?: boolean;
}

const write = (dir: string, rel: string, content: string | Buffer) => {
  fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
  fs.writeFileSync(path.join(dir, rel), content);
};
const replace = (dir: string, rel: string, make: (p: string) => void) => {
  fs.rmSync(path.join(dir, rel), { recursive: true, force: true });
  make(path.join(dir, rel));
};
const SOURCE = 'source:\n  type: file\n  path: data/*.ndjson\n';
const billionLaughs =
  ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]', ...'bcdefghi'.split('').map((c, i) => `${c}: &${c} [${Array(9).fill(`*${'abcdefghi'[i]}`).join(',')}]`)].join('\n') + '\n';

const CASES: Case[] = [
  // Malformed YAML: each a syntax error at its line.
  { cli: true, name: 'bad indentation', make: (d) => write(d, 'config/sources.yml', 'source:\n  type: file\n path: x\n'), expect: { file: 'config/sources.yml', line: 3, says: /YAML/ } },
  { name: 'an unclosed quote', make: (d) => write(d, 'config/sources.yml', 'source:\n  type: "file\n  path: x\n'), expect: { file: 'config/sources.yml', line: 'any', says: /quote/ } },
  { name: 'a tab as indentation', make: (d) => write(d, 'config/sources.yml', 'source:\n\ttype: file\n'), expect: { file: 'config/sources.yml', line: 2, says: /Tabs/ } },
  { name: 'a duplicate key', make: (d) => write(d, 'config/sources.yml', SOURCE + '  path: again\n'), expect: { file: 'config/sources.yml', line: 4, says: /unique/ } },
  {
    name: 'a duplicate key among 20,000 (no quadratic check)',
    make: (d) => write(d, 'config/models.yml', Array.from({ length: 20_000 }, (_, i) => `k${i}: ${i}`).join('\n') + '\nk7: again\n'),
    expect: { file: 'config/models.yml', line: 20_001, says: /unique/ },
  },
  { name: 'an unclosed flow mapping', make: (d) => write(d, 'config/sinks.yml', 'sink: {type: parquet, path: x\n'), expect: { file: 'config/sinks.yml', line: 'any' } },
  { name: 'two YAML documents', make: (d) => write(d, 'config/sources.yml', SOURCE + '---\nsource: {}\n'), expect: { file: 'config/sources.yml', line: 4 } },
  { cli: true, name: 'an anchor bomb (billion laughs)', make: (d) => write(d, 'config/models.yml', billionLaughs), expect: { file: 'config/models.yml', line: 2, says: /alias/ } },
  { name: 'an alias to an undefined anchor', make: (d) => write(d, 'config/models.yml', 'max_age_seconds: *nope\n'), expect: { file: 'config/models.yml', line: 1 } },
  {
    name: '20,000 nested flow lists',
    make: (d) => write(d, 'config/models.yml', 'x: ' + '['.repeat(20_000) + ']'.repeat(20_000) + '\n'),
    expect: { file: 'config/models.yml', line: 1, says: /deeper/ },
  },
  {
    name: '3,000 nested block mappings',
    make: (d) => write(d, 'config/models.yml', Array.from({ length: 3000 }, (_, i) => `${' '.repeat(i)}k:`).join('\n') + ' 1\n'),
    expect: { file: 'config/models.yml', line: 'any', says: /deeper/ },
  },
  // Wrong types.
  { cli: true, name: 'a string for batch_size', make: (d) => write(d, 'config/sources.yml', SOURCE + '  batch_size: lots\n'), expect: { file: 'config/sources.yml', line: 4, says: /batch_size/ } },
  { name: 'a list for source', make: (d) => write(d, 'config/sources.yml', 'source:\n  - type: file\n'), expect: { file: 'config/sources.yml', line: 1 } },
  { name: 'a number for the sink', make: (d) => write(d, 'config/sinks.yml', 'sink: 42\n'), expect: { file: 'config/sinks.yml', line: 1 } },
  { name: 'a string for the port', make: (d) => write(d, 'sluice.yml', 'server:\n  port: "9400"\n'), expect: { file: 'sluice.yml', line: 2, says: /port/ } },
  { name: 'a list for overrides', make: (d) => write(d, 'config/models.yml', 'overrides: [1, 2]\n'), expect: { file: 'config/models.yml', line: 1 } },
  { name: 'a scalar for the whole file', make: (d) => write(d, 'sluice.yml', '42\n'), expect: { file: 'sluice.yml', line: 1 } },
  { name: 'a number too big for batch_size', make: (d) => write(d, 'config/sources.yml', SOURCE + '  batch_size: 1e400\n'), expect: { file: 'config/sources.yml', line: 4 } },
  { name: 'a complex (list) key', make: (d) => write(d, 'config/sources.yml', SOURCE + '  ? [a, b]\n  : 1\n'), expect: { file: 'config/sources.yml', line: 'any' } },
  // Unknown keys.
  { cli: true, name: 'an unknown source key', make: (d) => write(d, 'config/sources.yml', SOURCE + '  bogus: 1\n'), expect: { file: 'config/sources.yml', line: 4, says: /bogus/ } },
  { name: 'an unknown top-level key', make: (d) => write(d, 'sluice.yml', 'name: p\nwall: {}\n'), expect: { file: 'sluice.yml', line: 2, says: /wall/ } },
  { name: 'an unknown override key', make: (d) => write(d, 'config/models.yml', 'overrides:\n  orders:\n    max_age: 1\n'), expect: { file: 'config/models.yml', line: 3, says: /max_age/ } },
  {
    name: '20,000 unknown keys (issues capped)',
    make: (d) => write(d, 'config/models.yml', Array.from({ length: 20_000 }, (_, i) => `key_${i}: ${i}`).join('\n') + '\n'),
    expect: { file: 'config/models.yml', line: 1, says: /unknown key/ },
  },
  // Giant files.
  { name: '20 MB of YAML comments', make: (d) => write(d, 'config/models.yml', `# ${'x'.repeat(77)}\n`.repeat((20 * MB) / 80)), expect: { file: 'config/models.yml', says: /bytes/ } },
  {
    cli: true,
    name: '20 MB of YAML keys',
    make: (d) => write(d, 'config/sources.yml', SOURCE + Array.from({ length: 1_200_000 }, (_, i) => `  k${i}: ${i}`).join('\n')),
    expect: { file: 'config/sources.yml', says: /bytes/ },
  },
  { name: 'a 20 MB string value', make: (d) => write(d, 'config/sources.yml', `source:\n  type: file\n  path: ${'x'.repeat(20 * MB)}\n`), expect: { file: 'config/sources.yml', says: /bytes/ } },
  // Symbolic links, directories, devices.
  { cli: true, name: 'a symlink to a missing file', make: (d) => replace(d, 'config/sinks.yml', (p) => fs.symlinkSync('nowhere.yml', p)), expect: { file: 'config/sinks.yml', says: /symbolic link/ } },
  { name: 'a symlink loop', make: (d) => replace(d, 'config/models.yml', (p) => fs.symlinkSync('models.yml', p)), expect: { file: 'config/models.yml', says: /loop/ } },
  {
    name: 'a two-link loop',
    make: (d) =>
      replace(d, 'config/sources.yml', (p) => {
        fs.symlinkSync('other.yml', p);
        fs.symlinkSync('sources.yml', path.join(path.dirname(p), 'other.yml'));
      }),
    expect: { file: 'config/sources.yml', says: /loop/ },
  },
  { name: 'a symlink to a missing model', make: (d) => fs.symlinkSync('gone.sql', path.join(d, 'models/gone.sql')), expect: { file: 'models/gone.sql', says: /symbolic link/ } },
  { name: 'a directory for sluice.yml', make: (d) => replace(d, 'sluice.yml', (p) => fs.mkdirSync(p)), expect: { file: 'sluice.yml', says: /directory/ } },
  { cli: true, name: 'a directory for sources.yml', make: (d) => replace(d, 'config/sources.yml', (p) => fs.mkdirSync(p)), expect: { file: 'config/sources.yml', says: /directory/ } },
  { name: 'a directory for a model', make: (d) => fs.mkdirSync(path.join(d, 'models/dir.sql')), expect: { file: 'models/dir.sql', says: /directory/ } },
  { name: 'a directory for a unit test file', make: (d) => fs.mkdirSync(path.join(d, 'tests/unit.yml')), expect: { file: 'tests/unit.yml', says: /directory/ } },
  { name: 'a dangling symlink for a unit test file', make: (d) => fs.symlinkSync('gone.yml', path.join(d, 'tests/unit.yml')), expect: { file: 'tests/unit.yml', says: /symbolic link/ } },
  { name: 'a file for the models directory', make: (d) => replace(d, 'models', (p) => fs.writeFileSync(p, 'x')), expect: { file: 'models', says: /not the models directory/ } },
  { name: 'a file for the tests directory', make: (d) => replace(d, 'tests', (p) => fs.writeFileSync(p, 'x')), expect: { file: 'tests', says: /not the tests directory/ } },
  {
    cli: true,
    name: 'a named pipe for models.yml (reading it would hang)',
    make: (d) => replace(d, 'config/models.yml', (p) => spawnSync('mkfifo', [p])),
    expect: { file: 'config/models.yml', says: /regular file/ },
  },
  { name: 'a symlink to /dev/zero (endless)', make: (d) => replace(d, 'config/models.yml', (p) => fs.symlinkSync('/dev/zero', p)), expect: { file: 'config/models.yml', says: /regular file/ } },
  // Empty files, bytes that are not text.
  { name: 'an empty sources.yml', make: (d) => write(d, 'config/sources.yml', ''), expect: { file: 'config/sources.yml', line: 1 } },
  { name: 'a sources.yml of whitespace and comments', make: (d) => write(d, 'config/sources.yml', '\n  \n# nothing\n'), expect: { file: 'config/sources.yml', line: 'any' } },
  { name: 'an empty model', make: (d) => write(d, 'models/orders.sql', ''), expect: undefined, cliOnly: false },
  {
    cli: true,
    name: 'invalid UTF-8',
    make: (d) => write(d, 'config/sources.yml', Buffer.concat([Buffer.from('source:\n  type: file\n  path: caf'), Buffer.from([0xe9]), Buffer.from('.ndjson\n')])),
    expect: { file: 'config/sources.yml', line: 3, says: /UTF-8/ },
  },
  { name: 'a UTF-16 file', make: (d) => write(d, 'config/sources.yml', Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(SOURCE, 'utf16le')])), expect: { file: 'config/sources.yml', line: 1 } },
  { name: 'a NUL byte in YAML', make: (d) => write(d, 'config/sources.yml', 'source:\n  type: file\n  path: a\0b\n'), expect: { file: 'config/sources.yml', line: 3, says: /NUL/ } },
  { name: 'a NUL byte in a model', make: (d) => write(d, 'models/orders.sql', 'SELECT 1 AS x\n\0FROM incoming\n'), expect: { file: 'models/orders.sql', line: 2, says: /NUL/ } },
  {
    name: 'an unset variable',
    make: (d) => write(d, 'config/sources.yml', 'source:\n  type: file\n  path: ${SLUICE_FUZZ_UNSET_VAR}\n'),
    expect: { file: 'config/sources.yml', line: 3, says: /SLUICE_FUZZ_UNSET_VAR/ },
  },
  // Hostile but valid: these load.
  { name: 'a BOM', make: (d) => write(d, 'config/sources.yml', '\ufeff' + SOURCE) },
  { name: 'CRLF line ends', make: (d) => write(d, 'config/sources.yml', SOURCE.replace(/\n/g, '\r\n')) },
  { name: 'an empty sluice.yml', make: (d) => write(d, 'sluice.yml', '') },
  // Only DuckDB can tell: the CLI must still name the file and line.
  {
    cli: true,
    name: 'a memory limit DuckDB refuses',
    make: (d) => write(d, 'sluice.yml', 'name: p\nduckdb:\n  memory_limit: lots\n'),
    expect: { file: 'sluice.yml', line: 2, says: /memory_limit/ },
    cliOnly: true,
  },
];

function issuesOf(e: ConfigError): string {
  return e.issues.map((i) => `${i.file}${i.line ? `:${i.line}` : ''}:${i.key ? ` ${i.key}:` : ''} ${i.message}`).join('\n');
}

/** Loads, timing it: the project, or the ConfigError; anything else is returned as `other`. */
function load(dir: string): { ms: number; error?: ConfigError; other?: unknown } {
  const t0 = performance.now();
  try {
    loadProject({ project: dir, env: {} });
    return { ms: performance.now() - t0 };
  } catch (e) {
    const ms = performance.now() - t0;
    return e instanceof ConfigError ? { ms, error: e } : { ms, other: e };
  }
}

const STACK = /^\s+at /m;

describe('config hostility: each case through the loader and the CLI', () => {
  const dirs = new Map<string, string>();
  beforeAll(async () => {
    const root = tmp('sluice-config-fuzz-');
    for (const [i, c] of CASES.entries()) {
      const dir = path.join(root, `case-${i}`);
      await scaffold(dir, 'p');
      c.make(dir);
      dirs.set(c.name, dir);
    }
  }, 120_000);

  // A case only the CLI can catch (DuckDB refusing a setting) has no loader test: the CLI one covers it.
  for (const c of CASES.filter((x) => !x.cliOnly)) {
    it(`loadProject: ${c.name}`, () => {
      const r = load(dirs.get(c.name)!);
      if (r.other) throw new Error(`loadProject threw ${(r.other as Error)?.constructor?.name}, not a ConfigError: ${(r.other as Error)?.stack ?? String(r.other)}`);
      expect(r.ms, 'loading took too long').toBeLessThan(LOAD_MS);
      if (!c.expect) {
        expect(r.error && issuesOf(r.error), 'a valid project').toBeUndefined();
        return;
      }
      expect(r.error, 'a ConfigError').toBeDefined();
      const e = r.error!;
      const want = c.expect;
      const hit = e.issues.find((i) => i.file.endsWith(want.file) && (!want.says || want.says.test(`${i.key ?? ''} ${i.message}`)));
      expect(hit, `an issue in ${want.file}${want.says ? ` saying ${want.says}` : ''}; got:\n${issuesOf(e)}`).toBeDefined();
      if (typeof want.line === 'number') expect(hit!.line, issuesOf(e)).toBe(want.line);
      if (want.line === 'any') expect(hit!.line, `a line; got:\n${issuesOf(e)}`).toBeGreaterThan(0);
      // Issues capped: a file of 20,000 unknown keys is not 20,000 issues.
      expect(e.issues.length).toBeLessThan(1000);
    });
  }

  it('sluice validate: exit 2, the file and line on stderr, no stack trace', async () => {
    expect(fs.existsSync(path.join(path.dirname(CLI), '..', 'dist', 'cli', 'main.js')), 'run `npm run build` first (npm test does)').toBe(true);
    const failures: string[] = [];
    // A few at a time: each is a Node process of its own.
    const queue = CASES.filter((c) => c.cli || FUZZ_LONG);
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        for (let c = queue.shift(); c; c = queue.shift()) {
          const r = await sluiceAsync(['validate', '--project', dirs.get(c.name)!], { timeout: 60_000 });
          const out = `exit ${r.code}${r.signal ? ` (${r.signal})` : ''}\nstdout: ${preview(r.stdout, 1500)}\nstderr: ${preview(r.stderr, 1500)}`;
          const problems: string[] = [];
          if (STACK.test(r.stderr) || STACK.test(r.stdout)) problems.push('a stack trace');
          if (/Warning:|FATAL|Native stack/.test(r.stderr)) problems.push('a warning or a crash report on stderr');
          if (c.expect) {
            if (r.code !== 2) problems.push(`exit ${r.code}, not 2`);
            const where = `${c.expect.file}${typeof c.expect.line === 'number' ? `:${c.expect.line}` : ''}`;
            if (!r.stderr.includes(where)) problems.push(`stderr does not name ${where}`);
          } else if (r.code !== 0 && r.code !== 2) problems.push(`exit ${r.code} for a loadable project`);
          if (problems.length) failures.push(`${c.name}: ${problems.join(', ')}\n  ${out.replace(/\n/g, '\n  ')}`);
        }
      }),
    );
    expect(failures, failures.join('\n\n')).toEqual([]);
  }, 300_000);
});

// ---------------------------------------------------------------------------------------------
// Random mutations of a valid project's YAML files.

const YAML_FILES = ['sluice.yml', 'config/sources.yml', 'config/sinks.yml', 'config/models.yml', 'tests/orders.yml'];
const FRAGMENTS = [
  '{',
  '}',
  '[',
  ']',
  ': ',
  ':',
  '- ',
  '-',
  '? ',
  ',',
  '"',
  "'",
  '#',
  '&a ',
  '*a',
  '&a [x, *a]',
  '!!str ',
  '!!int ',
  '!!binary ',
  '!foo ',
  '|',
  '>-',
  '---\n',
  '...\n',
  '%YAML 1.2\n',
  '<<: *a\n',
  '${X}',
  '${X:-',
  '${',
  '\t',
  '\r\n',
  '\r',
  '\0',
  '\ufeff',
  '\u2028',
  '~',
  'null',
  'true',
  'yes',
  '0x1F',
  '1e400',
  '-.inf',
  '.nan',
  '9'.repeat(40),
  '2024-01-01',
  '@',
  '`',
  '%',
];
const VALUES = [
  '',
  '~',
  '[]',
  '{}',
  '[1, 2]',
  '{a: 1}',
  '-1',
  '0',
  '1.5',
  '1e400',
  '99999999999999999999',
  'true',
  '"str"',
  "'x'",
  '|\n  text',
  '*undefined_alias',
  '&anchor x',
  '!!binary aGk=',
  'file',
  'kafka',
  '/',
  '..',
  '${HOME}',
  '"\\u0000"',
];

type Op =
  | { op: 'insert'; at: number; text: string }
  | { op: 'delete'; at: number; len: number }
  | { op: 'dupLine'; line: number }
  | { op: 'dropLine'; line: number }
  | { op: 'swapLines'; line: number }
  | { op: 'indent'; line: number; by: number; tab: boolean }
  | { op: 'value'; line: number; value: string }
  | { op: 'renameKey'; line: number; to: string }
  | { op: 'addKey'; line: number; key: string; value: string }
  | { op: 'truncate'; at: number }
  | { op: 'bytes'; at: number; bytes: number[] };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), text: fc.oneof(fc.constantFrom(...FRAGMENTS), fc.string({ maxLength: 4 }), fc.string({ unit: 'binary', maxLength: 3 })) }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 12 }) }),
  fc.record({ op: fc.constant('dupLine' as const), line: fc.nat() }),
  fc.record({ op: fc.constant('dropLine' as const), line: fc.nat() }),
  fc.record({ op: fc.constant('swapLines' as const), line: fc.nat() }),
  fc.record({ op: fc.constant('indent' as const), line: fc.nat(), by: fc.integer({ min: -4, max: 6 }), tab: fc.boolean() }),
  fc.record({ op: fc.constant('value' as const), line: fc.nat(), value: fc.oneof(fc.constantFrom(...VALUES), fc.string({ maxLength: 6 })) }),
  fc.record({
    op: fc.constant('renameKey' as const),
    line: fc.nat(),
    to: fc.oneof(
      fc.constantFrom('type', 'path', 'batch_size', 'sink', 'sinks', 'source', 'sources', 'overrides', 'targets', 'target', 'Type', 'PATH', '__proto__', 'constructor', '', '"quoted key"', 'a b'),
      fc.string({ minLength: 1, maxLength: 6 }),
    ),
  }),
  fc.record({
    op: fc.constant('addKey' as const),
    line: fc.nat(),
    key: fc.constantFrom('bogus', 'type', 'batch_size', 'sink', 'tests', 'columns', 'vars', 'limits', 'contract', 'retry', 'on_error', '<<'),
    value: fc.constantFrom(...VALUES),
  }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('bytes' as const), at: fc.nat(), bytes: fc.constantFrom([0xff], [0xc3], [0xe2, 0x82], [0xed, 0xa0, 0x80], [0xc0, 0x80], [0x00]) }),
);

function applyOp(text: Buffer, o: Op): Buffer {
  const lines = () => text.toString('latin1').split('\n');
  const join = (ls: string[]) => Buffer.from(ls.join('\n'), 'latin1');
  const n = text.length;
  switch (o.op) {
    case 'insert':
      return Buffer.concat([text.subarray(0, o.at % (n + 1)), Buffer.from(o.text), text.subarray(o.at % (n + 1))]);
    case 'delete':
      return Buffer.concat([text.subarray(0, o.at % (n + 1)), text.subarray((o.at % (n + 1)) + o.len)]);
    case 'truncate':
      return text.subarray(0, o.at % (n + 1));
    case 'bytes':
      return Buffer.concat([text.subarray(0, o.at % (n + 1)), Buffer.from(o.bytes), text.subarray(o.at % (n + 1))]);
  }
  const ls = lines();
  const i = o.line % ls.length;
  switch (o.op) {
    case 'dupLine':
      ls.splice(i, 0, ls[i]);
      break;
    case 'dropLine':
      ls.splice(i, 1);
      break;
    case 'swapLines':
      if (i + 1 < ls.length) [ls[i], ls[i + 1]] = [ls[i + 1], ls[i]];
      break;
    case 'indent': {
      const body = ls[i].trimStart();
      const indent = Math.max(0, ls[i].length - body.length + o.by);
      ls[i] = (o.tab ? '\t' : ' '.repeat(indent)) + body;
      break;
    }
    case 'value':
      ls[i] = ls[i].replace(/:(\s.*)?$/, `: ${Buffer.from(o.value).toString('latin1')}`);
      break;
    case 'renameKey':
      ls[i] = ls[i].replace(/^(\s*(?:- )?)[^:#\s][^:#]*:/, `$1${Buffer.from(o.to).toString('latin1')}:`);
      break;
    case 'addKey': {
      const indent = ls[i].length - ls[i].trimStart().length;
      ls.splice(i + 1, 0, `${' '.repeat(indent)}${o.key}: ${Buffer.from(o.value).toString('latin1')}`);
      break;
    }
  }
  return join(ls);
}

/** The lines of a file (for checking that an issue's line is in it). */
function lineCount(file: string): number {
  try {
    return fs.readFileSync(file).toString('latin1').split('\n').length;
  } catch {
    return Infinity;
  }
}

describe('config hostility: random mutations of a valid project (fast-check)', () => {
  let dir: string;
  const originals = new Map<string, Buffer>();
  beforeAll(async () => {
    dir = path.join(tmp('sluice-config-mutate-'), 'p');
    await scaffoldShowcase(dir, 'p');
    for (const f of YAML_FILES) originals.set(f, fs.readFileSync(path.join(dir, f)));
    // The showcase loads as generated: every failure below is the mutation's.
    expect(load(dir).error).toBeUndefined();
  });

  const mutationArb = fc.record({ file: fc.constantFrom(...YAML_FILES), ops: fc.array(opArb, { minLength: 1, maxLength: 4 }), also: fc.option(fc.constantFrom(...YAML_FILES), { freq: 4 }) });
  type Mutation = typeof mutationArb extends fc.Arbitrary<infer T> ? T : never;
  /** Writes the mutated files; returns them (for a failure message). */
  const apply = (m: Mutation): Record<string, Buffer> => {
    for (const [f, b] of originals) fs.writeFileSync(path.join(dir, f), b);
    const out: Record<string, Buffer> = {};
    for (const f of m.also ? [m.file, m.also] : [m.file]) {
      const text = m.ops.reduce(applyOp, out[f] ?? originals.get(f)!);
      fs.writeFileSync(path.join(dir, f), text);
      out[f] = text;
    }
    return out;
  };
  const shown = (files: Record<string, Buffer>) =>
    Object.entries(files)
      .map(([f, b]) => `--- ${f}\n${b.toString('utf8')}`)
      .join('\n');

  const b = budget(150, 0.7, PROPERTY_SECONDS);
  it('loadProject: a project or a ConfigError naming the file (and a line in it), quickly', { timeout: b.timeout }, async () => {
    await fc.assert(
      fc.asyncProperty(
        mutationArb,
        timed(b, (m: Mutation) => {
          const files = apply(m);
          const r = load(dir);
          const ctx = `\nmutated files:\n${shown(files)}`;
          if (r.other) throw new Error(`loadProject threw ${(r.other as Error)?.constructor?.name}, not a ConfigError: ${(r.other as Error)?.stack ?? String(r.other)}${ctx}`);
          if (r.ms > LOAD_MS) throw new Error(`loading took ${Math.round(r.ms)} ms${ctx}`);
          if (!r.error) return;
          for (const i of r.error.issues) {
            const abs = path.resolve(i.file);
            if (!i.file || !abs.startsWith(dir)) throw new Error(`an issue names no file of the project: ${JSON.stringify(i)}${ctx}`);
            if (!i.message?.trim()) throw new Error(`an issue without a message: ${JSON.stringify(i)}${ctx}`);
            if (i.line !== undefined && (!Number.isInteger(i.line) || i.line < 1 || i.line > lineCount(abs))) throw new Error(`an issue's line is not a line of ${i.file}: ${JSON.stringify(i)}${ctx}`);
            if (/YAML syntax error/.test(i.message) && i.line === undefined) throw new Error(`a YAML syntax error without its line: ${JSON.stringify(i)}${ctx}`);
          }
        }),
      ),
      b.params as fc.Parameters<[Mutation]>,
    );
  });

  const c = budget(6, 0.3, PROPERTY_SECONDS);
  it('sluice validate: exit 0 or 2, the file on stderr, no stack trace', { timeout: c.timeout + 60_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(
        mutationArb,
        timed(c, async (m: Mutation) => {
          const files = apply(m);
          const r = await sluiceAsync(['validate', '--project', dir], { timeout: 60_000 });
          const ctx = `\nexit ${r.code}\nstdout: ${preview(r.stdout, 1000)}\nstderr: ${preview(r.stderr, 2000)}\nmutated files:\n${shown(files)}`;
          if (STACK.test(r.stderr) || STACK.test(r.stdout)) throw new Error(`a stack trace${ctx}`);
          if (/Warning:|FATAL|Native stack/.test(r.stderr)) throw new Error(`a warning or crash report on stderr${ctx}`);
          if (r.code !== 0 && r.code !== 2) throw new Error(`exit ${r.code}: neither valid nor a config error${ctx}`);
          if (r.code === 2 && !r.stderr.includes(dir)) throw new Error(`the error names no file of the project${ctx}`);
        }),
      ),
      c.params as fc.Parameters<[Mutation]>,
    );
  });

  afterAll(() => {
    if (dir) for (const [f, b] of originals) fs.writeFileSync(path.join(dir, f), b);
  });
});
