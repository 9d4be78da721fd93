import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { waitFor } from './wait.js';

/** Starts the machine's NATS server with JetStream (the command DEVELOPERS.md gives). */
export function startNats(): void {
  execFileSync('start-stop-daemon', ['--start', '--oknodo', '--background', '--exec', '/usr/sbin/nats-server', '--', '-a', '127.0.0.1', '-p', '4222', '-js', '-sd', '/var/lib/nats-server'], {
    stdio: 'ignore',
  });
}

export function natsListening(): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port: 4222 }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The pid of the process listening on 127.0.0.1:4222, from `ss`. */
function natsPid(): number | undefined {
  const out = execFileSync('ss', ['-ltnpH', 'sport = :4222'], { encoding: 'utf8' });
  const m = /pid=(\d+)/.exec(out);
  return m ? Number(m[1]) : undefined;
}

/**
 * Restarts the machine's NATS server (SIGTERM to the process listening on 4222, then the start
 * command): every client connection drops. Resolves once it listens again.
 */
export async function restartNats(): Promise<void> {
  const pid = natsPid();
  if (pid) process.kill(pid, 'SIGTERM');
  // start-stop-daemon would see a server still shutting down as running: wait for it to exit.
  await waitFor(`the NATS server (pid ${pid}) to exit and port 4222 to close`, async () => !(pid && alive(pid)) && !(await natsListening()), { timeoutMs: 20_000, stepMs: 100 });
  startNats();
  await waitFor('the restarted NATS server to listen on 4222', natsListening, { timeoutMs: 30_000, stepMs: 100 });
}
