/**
 * SIGTERM and SIGINT for the long-running commands. bin/sluice.js imports this module before
 * anything heavy (loading DuckDB takes about half a second), so a stop signal that arrives
 * during start-up is kept and handed to the command as soon as it listens: a pod stopped right
 * after it started still finishes, flushes and exits 0. Commands that do not listen release
 * the signals, and a signal kept so far then ends the process as it would have by default.
 */
const kept: NodeJS.Signals[] = [];
let handler: ((signal: NodeJS.Signals) => void) | undefined;

function capture(signal: NodeJS.Signals): void {
  if (handler) handler(signal);
  else kept.push(signal);
}

process.on('SIGTERM', capture);
process.on('SIGINT', capture);

/** Routes stop signals to `h`, starting with any that arrived before. */
export function onStopSignal(h: (signal: NodeJS.Signals) => void): void {
  handler = h;
  for (const s of kept.splice(0)) h(s);
}

/** Gives the signals their default behaviour back (for commands that do not listen). */
export function releaseStopSignals(): void {
  process.off('SIGTERM', capture);
  process.off('SIGINT', capture);
  const first = kept.shift();
  if (first) process.kill(process.pid, first);
}
