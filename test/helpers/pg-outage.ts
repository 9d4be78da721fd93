import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

// While the outage test holds PostgreSQL down on purpose, this marker names its pid, so that the
// test setup of another run (test/global-setup.ts) does not start the server in the middle of it.

const MARKER = path.join(os.tmpdir(), 'sluice-postgres-outage.pid');

export function markOutage(): void {
  fs.writeFileSync(MARKER, String(process.pid));
}

export function clearOutage(): void {
  fs.rmSync(MARKER, { force: true });
}

/** True while process `pid` exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** True when something accepts connections on 127.0.0.1:`port`. */
export function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

/** True while a live test process keeps PostgreSQL stopped on purpose. */
export function outageInProgress(): boolean {
  let pid = 0;
  try {
    pid = Number(fs.readFileSync(MARKER, 'utf8'));
  } catch {
    return false;
  }
  if (alive(pid)) return true;
  clearOutage();
  return false;
}
