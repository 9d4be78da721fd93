import fs from 'node:fs';
import path from 'node:path';
import type { ConfigIssue } from '../errors.js';
import { renderModel, type RenderedModel } from '../sql/template.js';
import { DEFAULT_MAX_AGE_SECONDS, DEFAULT_MAX_FILE_BYTES } from './project-schema.js';
import type { ModelDef } from './project-types.js';
import { readConfigText } from './yaml-file.js';

/**
 * The models of models/*.sql (one SELECT per file, named by the file), templated, in file-name
 * order, with default settings: config/models.yml and the DAG fill in the rest. A missing or
 * empty directory (unless the project has handlers), an unreadable file or a name that is not an
 * identifier is an issue.
 */
export function readModelFiles(modelsDir: string, issues: ConfigIssue[], show: (file: string) => string, handlers = false): ModelDef[] {
  const models: ModelDef[] = [];
  // A project of handlers alone needs no models directory.
  if (!fs.existsSync(modelsDir) && handlers) return models;
  if (!fs.existsSync(modelsDir)) {
    issues.push({ file: show(modelsDir), message: 'missing: the models directory holds one SELECT per .sql file' });
    return models;
  }
  if (!fs.statSync(modelsDir).isDirectory()) {
    issues.push({ file: show(modelsDir), message: 'is a file, not the models directory (one SELECT per .sql file)' });
    return models;
  }
  const files = fs
    .readdirSync(modelsDir)
    .filter((f) => f.endsWith('.sql'))
    .sort();
  if (files.length === 0 && !handlers) issues.push({ file: show(modelsDir), message: 'no models: add a .sql file with a SELECT' });
  for (const f of files) {
    const file = path.join(modelsDir, f);
    const name = f.slice(0, -4);
    const sqlText = readConfigText(file, show(file), issues);
    if (sqlText === undefined) continue;
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
      issues.push({ file: show(file), message: `model name "${name}" must be a plain identifier (letters, digits, _)` });
      continue;
    }
    models.push(newModel(name, show(file), sqlText, renderModel(sqlText, show(file), issues)));
  }
  return models;
}

/** A step of the DAG as read from its file, with default settings: config/models.yml and the DAG fill in the rest. */
export function newModel(name: string, file: string, sqlText: string, rendered: RenderedModel): ModelDef {
  return {
    name,
    file,
    sqlText,
    rendered,
    refs: rendered.refs.map((r) => r.name),
    source: '',
    feeds: [],
    sinks: [],
    columns: [],
    dataTests: [],
    maxFileBytes: DEFAULT_MAX_FILE_BYTES,
    maxAgeSeconds: DEFAULT_MAX_AGE_SECONDS,
  };
}
