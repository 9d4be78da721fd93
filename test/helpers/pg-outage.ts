import { execSync } from 'node:child_process';
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

/** The local cluster's pg_ctlcluster command (start, stop). */
export const cluster = (): string => `pg_ctlcluster --skip-systemctl-redirect ${fs.readdirSync('/etc/postgresql')[0]} main`;

/** Stops PostgreSQL on purpose: marks the outage first (see markOutage). `-m fast` drops the connections at once. */
export function stopPostgres(mode: 'smart' | 'fast' = 'smart'): void {
  markOutage();
  execSync(`${cluster()} stop${mode === 'fast' ? ' -m fast' : ''}`, { stdio: 'ignore' });
}

/** Starts PostgreSQL again (when down) and waits until it listens; clears the outage marker. */
export async function startPostgres(): Promise<void> {
  clearOutage();
  if (await listening(5432)) return;
  execSync(`${cluster()} start`, { stdio: 'ignore' });
  const deadline = Date.now() + 60_000;
  while (!(await listening(5432))) {
    if (Date.now() > deadline) throw new Error('PostgreSQL did not start within 60 s');
    await new Promise((r) => setTimeout(r, 200));
  }
}
