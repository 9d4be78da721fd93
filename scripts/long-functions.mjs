// Lists the functions of src/ longer than a limit (default 80 lines): function declarations and
// expressions, arrow functions, class methods, constructors, accessors and object methods.
// A long function passes when the line just before its first line says why:
//
//   // long: one switch over every message kind; splitting it scatters the cases
//   function decode(...) {
//
// Usage: node scripts/long-functions.mjs [--max N] [--json] [path...]   (paths default to src/)
// Prints every long function; exits 1 when one has no `// long: <reason>`, 2 on bad usage or a
// file that does not parse. test/unit/function-length.test.ts runs it over src/.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseSync } from '@swc/core';

export const DEFAULT_MAX_LINES = 80;
const REASON = /^\s*\/\/\s*long:\s*(\S.*)$/;

/** Node types that are a function body of their own, and how each is named in the report. */
const FUNCTION_TYPES = new Set([
  'FunctionDeclaration',
  'FunctionExpression',
  'ArrowFunctionExpression',
  'ClassMethod',
  'PrivateMethod',
  'Constructor',
  'MethodProperty',
  'GetterProperty',
  'SetterProperty',
]);

/** Every .ts file under the given paths (files are taken as they are), sorted, .d.ts excepted. */
export function tsFiles(paths) {
  const out = [];
  const walk = (p) => {
    const st = fs.statSync(p);
    if (st.isDirectory()) {
      for (const e of fs.readdirSync(p).sort()) walk(path.join(p, e));
    } else if (p.endsWith('.ts') && !p.endsWith('.d.ts')) out.push(p);
  };
  for (const p of paths) walk(p);
  return out.sort();
}

function keyName(key) {
  if (!key) return undefined;
  if (key.type === 'Identifier') return key.value;
  if (key.type === 'PrivateName') return `#${key.id?.value ?? key.value}`;
  if (key.type === 'StringLiteral' || key.type === 'NumericLiteral') return String(key.value);
  if (key.type === 'Computed') return '[computed]';
  return undefined;
}

/** The name a reader would look for: the function's own, its method key, or what it is assigned to. */
function functionName(node, parent, className) {
  const own = node.identifier?.value ?? (node.type === 'Constructor' ? 'constructor' : keyName(node.key));
  const method = node.type === 'ClassMethod' || node.type === 'PrivateMethod' || node.type === 'Constructor';
  if (own) return method && className ? `${className}.${own}` : own;
  if (parent?.type === 'VariableDeclarator' && parent.id?.type === 'Identifier') return parent.id.value;
  if (parent?.type === 'KeyValueProperty' || parent?.type === 'ClassProperty') {
    const k = keyName(parent.key);
    if (k) return className && parent.type === 'ClassProperty' ? `${className}.${k}` : k;
  }
  if (parent?.type === 'AssignmentExpression' && parent.left?.type === 'MemberExpression') return keyName(parent.left.property) ?? '(anonymous)';
  return '(anonymous)';
}

/** 1-based line of a 1-based UTF-8 byte position (swc's spans). */
function lineAt(lineStarts, pos) {
  let lo = 0;
  let hi = lineStarts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (lineStarts[mid] <= pos - 1) lo = mid;
    else hi = mid - 1;
  }
  return lo + 1;
}

/** The functions of one file's source text with their first and last line. */
export function functionsOf(text, file = '<text>') {
  const bytes = Buffer.from(text, 'utf8');
  const lineStarts = [0];
  for (let i = 0; i < bytes.length; i++) if (bytes[i] === 0x0a) lineStarts.push(i + 1);
  const ast = parseSync(text, { syntax: 'typescript', tsx: false, decorators: true, comments: false });
  // swc's spans count UTF-8 bytes from 1 in each parse; a span past the end means that changed.
  if (ast.span.end > bytes.length + 1) throw new Error(`${file}: swc span ${ast.span.end} is past the end (${bytes.length} bytes): the span base changed`);
  const found = [];
  const visit = (node, parent, className) => {
    if (Array.isArray(node)) {
      for (const n of node) visit(n, parent, className);
      return;
    }
    if (!node || typeof node !== 'object') return;
    let cls = className;
    if ((node.type === 'ClassDeclaration' || node.type === 'ClassExpression') && node.identifier) cls = node.identifier.value;
    if (FUNCTION_TYPES.has(node.type) && node.span) {
      const start = lineAt(lineStarts, node.span.start);
      const end = lineAt(lineStarts, Math.max(node.span.start, node.span.end - 1));
      found.push({ name: functionName(node, parent, cls), start, end, lines: end - start + 1 });
    }
    for (const [k, v] of Object.entries(node)) {
      if (k === 'span' || !v || typeof v !== 'object') continue;
      visit(v, node, cls);
    }
  };
  visit(ast.body, undefined, undefined);
  const lines = text.split('\n');
  return found
    .sort((a, b) => a.start - b.start || b.lines - a.lines)
    .map((f) => {
      const m = f.start >= 2 ? REASON.exec(lines[f.start - 2]) : null;
      return m ? { ...f, reason: m[1].trim() } : f;
    });
}

/** Functions longer than `max` lines in the given files, with their reason when one is written. */
export function longFunctions(files, max = DEFAULT_MAX_LINES, root = process.cwd()) {
  const out = [];
  for (const f of files) {
    const rel = path.relative(root, f).split(path.sep).join('/');
    for (const fn of functionsOf(fs.readFileSync(f, 'utf8'), rel)) {
      if (fn.lines > max) out.push({ file: rel, ...fn });
    }
  }
  return out;
}

function main(argv) {
  let max = DEFAULT_MAX_LINES;
  let json = false;
  const paths = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') json = true;
    else if (a === '--max') {
      max = Number(argv[++i]);
      if (!Number.isInteger(max) || max < 1) {
        console.error(`--max: expected a whole number of lines >= 1, got ${argv[i] ?? 'nothing'}`);
        return 2;
      }
    } else if (a.startsWith('-')) {
      console.error(`unknown option ${a} (usage: long-functions.mjs [--max N] [--json] [path...])`);
      return 2;
    } else paths.push(a);
  }
  if (paths.length === 0) paths.push('src');
  for (const p of paths) {
    if (!fs.existsSync(p)) {
      console.error(`${p}: no such file or directory`);
      return 2;
    }
  }
  let found;
  try {
    found = longFunctions(tsFiles(paths), max);
  } catch (e) {
    console.error(`cannot parse: ${e instanceof Error ? e.message : String(e)}`);
    return 2;
  }
  const unexplained = found.filter((f) => f.reason === undefined);
  if (json) console.log(JSON.stringify({ max, functions: found }, null, 2));
  else {
    for (const f of found) console.log(`${f.file}:${f.start} ${f.name}: ${f.lines} lines${f.reason ? ` (long: ${f.reason})` : ''}`);
    console.log(`${found.length} function(s) over ${max} lines, ${unexplained.length} without a \`// long: <reason>\` on the line before`);
  }
  return unexplained.length ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) process.exitCode = main(process.argv.slice(2));
