// sluice as a library: what a handler (handlers/<name>.ts in a project) is written against,
// and runProject(), which runs a project as `sluice run` does.
// A handler loaded by `sluice run` that imports from 'sluice' gets handler-api.ts (the handler's
// half of this), whatever the project's own node_modules hold.

export * from './handler-api.js';
export { runProject, type RunProjectOptions } from './cli/commands/run.js';
export type { RunSummary } from './engine/pipeline.js';
export { ConfigError, SluiceError } from './errors.js';
