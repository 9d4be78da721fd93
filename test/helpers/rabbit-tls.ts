import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

// The RabbitMQ on the machine listens for AMQP over TLS on 127.0.0.1:5671 with a test CA made
// here, so the TLS options of the rabbitmq source are tested against the broker's own TLS.
// Test certificates only: they live beside the broker's configuration, readable by it.

export const TLS_PORT = 5671;
export const TLS_DIR = '/etc/rabbitmq/sluice-test-tls';
export const TLS_CA = path.join(TLS_DIR, 'ca.pem');

const MARK = '# sluice tests: AMQP over TLS';

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: 'ignore', cwd: TLS_DIR });
}

/** A CA and a server certificate for 127.0.0.1 / localhost signed by it, unless present. */
function makeCertificates(): void {
  if (fs.existsSync(path.join(TLS_DIR, 'server.pem')) && fs.existsSync(TLS_CA)) return;
  fs.mkdirSync(TLS_DIR, { recursive: true });
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '3650', '-subj', '/CN=sluice test CA', '-keyout', 'ca.key', '-out', 'ca.pem']);
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-keyout', 'server.key', '-out', 'server.csr']);
  fs.writeFileSync(path.join(TLS_DIR, 'server.ext'), 'subjectAltName = IP:127.0.0.1, DNS:localhost\n');
  openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '3650', '-extfile', 'server.ext', '-out', 'server.pem']);
  for (const f of ['ca.pem', 'server.pem', 'server.key']) fs.chmodSync(path.join(TLS_DIR, f), 0o644);
}

/**
 * Adds the TLS listener to rabbitmq.conf when it is missing. Returns true when the
 * configuration changed (the broker must restart to open the listener).
 */
function configure(confFile: string): boolean {
  const conf = fs.existsSync(confFile) ? fs.readFileSync(confFile, 'utf8') : '';
  if (conf.includes(MARK)) return false;
  const lines = [
    MARK,
    `listeners.ssl.default = 127.0.0.1:${TLS_PORT}`,
    `ssl_options.cacertfile = ${TLS_CA}`,
    `ssl_options.certfile = ${path.join(TLS_DIR, 'server.pem')}`,
    `ssl_options.keyfile = ${path.join(TLS_DIR, 'server.key')}`,
    'ssl_options.verify = verify_none',
    'ssl_options.fail_if_no_peer_cert = false',
  ];
  fs.writeFileSync(confFile, `${conf.replace(/\n*$/, '\n')}${lines.join('\n')}\n`);
  return true;
}

/**
 * Makes sure RabbitMQ serves TLS on 127.0.0.1:5671: certificates, configuration, and a broker
 * restart when the configuration had to change or the listener is not up.
 */
export async function ensureRabbitTls(listening: (port: number) => Promise<boolean>): Promise<void> {
  if ((await listening(TLS_PORT)) && fs.existsSync(TLS_CA)) return;
  makeCertificates();
  configure('/etc/rabbitmq/rabbitmq.conf');
  console.log(`restarting RabbitMQ with a TLS listener on 127.0.0.1:${TLS_PORT}`);
  spawnSync('rabbitmqctl', ['stop'], { stdio: 'ignore', timeout: 120_000 });
  spawnSync('rabbitmq-server', ['-detached'], { stdio: 'ignore' });
  const deadline = Date.now() + 120_000;
  while (!((await listening(5672)) && (await listening(TLS_PORT)))) {
    if (Date.now() > deadline) throw new Error(`RabbitMQ did not come back with its TLS listener on port ${TLS_PORT}; see /var/log/rabbitmq`);
    await new Promise((r) => setTimeout(r, 500));
  }
  spawnSync('rabbitmqctl', ['await_startup'], { stdio: 'ignore', timeout: 120_000 });
}
