#!/usr/bin/env node
// CommonJS (see bin/package.json), so that this runs before anything asynchronous: libuv sizes
// its thread pool when it is first used, and an ES module entry is itself read through it.
'use strict';

// Every DuckDB query runs on a libuv pool thread for its whole length, as does each file read,
// write and fsync. A pipeline has two queries in flight (one batch decoding while another runs
// the models): with several sources in one process, libuv's default of four threads is taken by
// queries alone, and one source's file and WAL work waits on another's long queries. 16 keep
// room for six sources and their files; UV_THREADPOOL_SIZE set by the user wins.
if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '16';

// Time is UTC, whatever the machine's zone: DuckDB (built without ICU here) converts a
// TIMESTAMP WITH TIME ZONE, and text without an offset cast to one, in the process's zone, so
// a model's output would depend on where it runs. Logs show UTC times too.
process.env.TZ = 'UTC';

(async () => {
  // First, before the heavy modules load: a stop signal during start-up is kept (see stop-signals).
  await import('../dist/cli/stop-signals.js');
  // A run started again with node.max_heap_mb (see src/cli/heap.ts) dies with its parent.
  const { dieWithParent } = await import('../dist/cli/heap.js');
  dieWithParent();
  const { main } = await import('../dist/cli/main.js');
  return main(process.argv);
})().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(err?.stack ?? String(err));
    process.exitCode = 1;
  },
);
