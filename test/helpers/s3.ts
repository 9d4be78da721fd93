import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { CreateBucketCommand, GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { freePort, ROOT, tempDir } from './cli.js';

/**
 * A real S3-compatible server for the tests: s3rver (npm) in its own process on 127.0.0.1, a
 * random port and a temp directory. Its own process, because the tests run the CLI with
 * spawnSync, which blocks this process's event loop. s3rver's default credentials are
 * S3RVER / S3RVER; `env` holds what a sluice process needs to reach it.
 */
export interface S3Server {
  endpoint: string;
  port: number;
  dir: string;
  client: S3Client;
  env: Record<string, string>;
  createBucket(name: string): Promise<void>;
  /** Every object key under `prefix` (sorted). */
  keys(bucket: string, prefix?: string): Promise<string[]>;
  /** Downloads every object under `prefix` into a fresh local directory (same relative paths). */
  download(bucket: string, prefix?: string): Promise<string>;
  /** Stops the server (the port stops listening); its data stays for start(). */
  stop(): Promise<void>;
  /** Starts it again on the same port and directory. */
  start(): Promise<void>;
}

const CREDENTIALS = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1' };

const LAUNCH = `
import S3rver from 's3rver';
const [port, dir] = process.argv.slice(1);
const server = new S3rver({ address: '127.0.0.1', port: Number(port), directory: dir, silent: true });
await server.run();
process.stdout.write('listening\\n');
`;

function launch(port: number, dir: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', LAUNCH, String(port), dir], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    const t = setTimeout(() => reject(new Error(`s3rver did not start: ${err}`)), 30_000);
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout!.on('data', (d: Buffer) => {
      if (d.toString().includes('listening')) {
        clearTimeout(t);
        resolve(child);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`s3rver exited (${code}): ${err}`));
    });
  });
}

export async function startS3(): Promise<S3Server> {
  const port = await freePort();
  const dir = tempDir('sluice-s3rver-');
  let proc: ChildProcess | undefined = await launch(port, dir);
  const endpoint = `http://127.0.0.1:${port}`;
  const client = new S3Client({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: CREDENTIALS.AWS_ACCESS_KEY_ID, secretAccessKey: CREDENTIALS.AWS_SECRET_ACCESS_KEY },
  });
  const keys = async (bucket: string, prefix = ''): Promise<string[]> => {
    const out: string[] = [];
    let token: string | undefined;
    do {
      const r = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix || undefined, ContinuationToken: token }));
      for (const o of r.Contents ?? []) if (o.Key) out.push(o.Key);
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return out.sort();
  };
  return {
    endpoint,
    port,
    dir,
    client,
    env: { ...CREDENTIALS },
    async createBucket(name) {
      await client.send(new CreateBucketCommand({ Bucket: name }));
    },
    keys,
    async download(bucket, prefix = '') {
      const local = tempDir('sluice-s3-download-');
      for (const key of await keys(bucket, prefix)) {
        const r = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
        const file = path.join(local, key.slice(prefix.length).replace(/^\/+/, ''));
        fs.mkdirSync(path.dirname(file), { recursive: true });
        fs.writeFileSync(file, await r.Body!.transformToByteArray());
      }
      return local;
    },
    async stop() {
      const p = proc;
      proc = undefined;
      if (!p || p.exitCode !== null) return;
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGTERM');
      await exited;
    },
    async start() {
      if (!proc) proc = await launch(port, dir);
    },
  };
}
