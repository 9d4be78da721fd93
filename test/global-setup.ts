import fs from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import { ensureRabbitTls } from './helpers/rabbit-tls.js';
import { startNats } from './helpers/nats.js';
import { listening, outageInProgress } from './helpers/pg-outage.js';

// `npm test` starts the local services the tests talk to when they are down, so the README's
// test command works on a machine where nothing was started by hand.

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
  // PostgreSQL and MariaDB: the postgres and mysql sink tests' databases (db `test` on both).
  // Not while the postgres outage test keeps it stopped on purpose (it starts it again itself).
  if (!outageInProgress()) {
    await ensure('PostgreSQL', 5432, () => {
      const version = fs.readdirSync('/etc/postgresql')[0];
      spawnSync('pg_ctlcluster', ['--skip-systemctl-redirect', version, 'main', 'start'], { stdio: 'ignore' });
    });
  }
  await ensure('MariaDB', 3306, () => {
    spawnSync('start-stop-daemon', ['--start', '--oknodo', '--background', '--exec', '/usr/sbin/mariadbd'], { stdio: 'ignore' });
  });
  // kcat runs librdkafka's mock cluster, the Kafka broker of the kafka tests (they start it).
  aptInstall('kcat', "the Kafka tests' broker");
  // The docs test renders the generated site in Debian's Chromium (playwright-core).
  aptInstall('chromium', 'the browser of the docs test');
}

/** Installs a Debian package whose command is missing (the tests run as root, as CI does). */
function aptInstall(pkg: string, why: string): void {
  if (spawnSync('sh', ['-c', `command -v ${pkg}`], { stdio: 'ignore' }).status === 0) return;
  console.log(`installing ${pkg} (${why})`);
  spawnSync('sh', ['-c', `apt-get install -y ${pkg} || (apt-get update && apt-get install -y ${pkg})`], { stdio: 'ignore', timeout: 600_000 });
}
