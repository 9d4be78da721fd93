#!/usr/bin/env node
// First, before the heavy modules load: a stop signal during start-up is kept (see stop-signals).
import '../dist/cli/stop-signals.js';

const { main } = await import('../dist/cli/main.js');
main(process.argv).then(
  (code) => { process.exitCode = code; },
  (err) => { console.error(err?.stack ?? String(err)); process.exitCode = 1; },
);
