import { execFileSync, spawnSync } from 'node:child_process';
import net from 'node:net';
import { ensureRabbitTls } from './helpers/rabbit-tls.js';
import { startNats } from './helpers/nats.js';

// `npm test` starts the local services the tests talk to when they are down, so the README's
// test command works on a machine where nothing was started by hand.

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

async function ensure(name: string, port: number, start: () => void): Promise<void> {
  if (await listening(port)) return;
  console.log(`starting ${name} (nothing listens on 127.0.0.1:${port})`);
  start();
  const deadline = Date.now() + 120_000;
  while (!(await listening(port))) {
    if (Date.now() > deadline) throw new Error(`${name} did not start on port ${port}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

export default async function setup(): Promise<void> {
  await ensure('RabbitMQ', 5672, () => {
    spawnSync('rabbitmq-server', ['-detached'], { stdio: 'ignore' });
  });
  try {
    execFileSync('rabbitmqctl', ['await_startup'], { stdio: 'ignore', timeout: 120_000 });
  } catch {
    // older rabbitmqctl without await_startup: the port check above is enough
  }
  await ensureRabbitTls(listening);
  await ensure('NATS', 4222, startNats);
  await ensure('Redis', 6379, () => {
    spawnSync('redis-server', ['--daemonize', 'yes', '--bind', '127.0.0.1', '--port', '6379', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  });
}
