// `npm run docs:gen`: regenerates the key tables of docs/sources.md and docs/sinks.md (between
// their `<!-- generated:... -->` markers) and the JSON Schemas in schema/, from the config
// schemas as built in dist/ (run `npm run build` first when src/ changed).
// test/unit/docs-reference.test.ts fails when these files differ from what src/ generates.
// `--check`: write nothing, list the files that differ and exit 1 if any does.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { generatedFiles } from './docs-reference.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = (rel) => import(pathToFileURL(path.join(root, 'dist', rel)).href);

if (!fs.existsSync(path.join(root, 'dist', 'connectors', 'registry.js'))) {
  console.error('dist/ is missing: run `npm run build` first');
  process.exit(1);
}
const { sources, sinks } = await dist('connectors/registry.js');
const { sourcePolicySchema, sinkPolicySchema } = await dist('connectors/shared-config.js');
const loader = await dist('project/project-loader.js');
const { targetSchema } = await dist('project/targets.js');
// tests/*.yml's schema (its module moved from tests/ to project/).
let unitTestFileSchema;
for (const rel of ['project/data-test-config.js', 'tests/test-config.js']) {
  if (fs.existsSync(path.join(root, 'dist', rel))) ({ unitTestFileSchema } = await dist(rel));
  if (unitTestFileSchema) break;
}

const files = generatedFiles(root, {
  sources,
  sinks,
  sourcePolicySchema,
  sinkPolicySchema,
  projectSchema: loader.projectSchema,
  modelsSchema: loader.modelsSchema,
  targetSchema,
  unitTestFileSchema,
});

const check = process.argv.includes('--check');
fs.mkdirSync(path.join(root, 'schema'), { recursive: true });
let changed = 0;
for (const [rel, content] of Object.entries(files)) {
  const file = path.join(root, rel);
  const old = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : undefined;
  if (old === content) continue;
  if (!check) fs.writeFileSync(file, content);
  changed++;
  console.log(`${check ? 'stale' : 'wrote'} ${rel}`);
}
// Schemas no longer generated (a config file that lost its schema) are removed.
for (const f of fs.readdirSync(path.join(root, 'schema'))) {
  if (f.endsWith('.schema.json') && !(`schema/${f}` in files)) {
    if (!check) fs.rmSync(path.join(root, 'schema', f));
    changed++;
    console.log(`${check ? 'stale' : 'removed'} schema/${f}`);
  }
}
if (check) {
  console.log(changed ? `${changed} file(s) stale: run npm run docs:gen` : 'the generated reference is up to date');
  if (changed) process.exitCode = 1;
} else console.log(changed ? `${changed} file(s) updated` : 'the generated reference is up to date');
if (!loader.projectSchema || !loader.modelsSchema) {
  console.log('note: src/project/project-loader.ts does not export projectSchema / modelsSchema: no schema for sluice.yml / config/models.yml');
}
