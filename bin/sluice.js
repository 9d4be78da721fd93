#!/usr/bin/env node
// First, before the heavy modules load: a stop signal during start-up is kept (see stop-signals).
import '../dist/cli/stop-signals.js';
// A run started again with node.max_heap_mb (see src/cli/heap.ts) dies with its parent.
import { dieWithParent } from '../dist/cli/heap.js';
dieWithParent();

const { main } = await import('../dist/cli/main.js');
main(process.argv).then(
  (code) => { process.exitCode = code; },
  (err) => { console.error(err?.stack ?? String(err)); process.exitCode = 1; },
);
