import { execFileSync } from 'node:child_process';
import net from 'node:net';

/** Starts the machine's NATS server with JetStream (the command DEVELOPERS.md gives). */
export function startNats(): void {
  execFileSync('start-stop-daemon', ['--start', '--oknodo', '--background', '--exec', '/usr/sbin/nats-server', '--', '-a', '127.0.0.1', '-p', '4222', '-js', '-sd', '/var/lib/nats-server'], { stdio: 'ignore' });
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
