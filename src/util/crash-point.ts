/**
 * Deterministic crash injection for the crash tests: when SLUICE_CRASH_AT names this point,
 * the process SIGKILLs itself the Nth time it gets here (SLUICE_CRASH_AFTER, default 1).
 * A real kill of a real process, placed where a random kill rarely lands.
 */
const target = process.env.SLUICE_CRASH_AT;
let remaining = Number(process.env.SLUICE_CRASH_AFTER ?? '1');

export function crashPoint(name: string): void {
  if (target !== name) return;
  remaining--;
  if (remaining <= 0) process.kill(process.pid, 'SIGKILL');
}
