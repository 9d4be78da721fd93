import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import type { Logger } from 'pino';
import { SluiceError, errorMessage } from '../../errors.js';
import { crashPoint } from '../../util/crash-point.js';
import { parseS3Path, type FileSinkConfig } from '../files/file-sink-config.js';
import { filesUnder, type FileStorage, type StoredEntry } from '../files/storage.js';
import type { ConnectorContext } from '../types.js';

/** Incomplete multipart uploads older than this under the sink's prefix are aborted at start. */
const STALE_UPLOAD_MS = 3_600_000;

/**
 * S3-compatible object storage. Files are produced in a local temp directory and uploaded with
 * lib-storage's Upload (multipart above part_size_mb): S3 makes an object visible under its key
 * only once the upload completed, so a reader never sees a partial object, and a replay
 * uploads the same key again (replacing, not adding). A partitioned flush is one object per
 * partition file, then `<flush>/_SUCCESS` listing them, written last: readers that wait for
 * _SUCCESS see whole flushes; others may briefly see some partitions of a flush before the rest.
 */
export class S3Storage implements FileStorage {
  readonly where: string;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly client: S3Client;
  private readonly tmpRoot: string;
  private readonly log: Logger;

  constructor(
    private readonly cfg: FileSinkConfig,
    ctx: ConnectorContext,
  ) {
    const loc = parseS3Path(cfg.path)!;
    this.bucket = loc.bucket;
    this.prefix = loc.prefix;
    this.where = `s3://${loc.bucket}${loc.prefix ? `/${loc.prefix}` : ''}`;
    this.log = ctx.log;
    // The SDK prints a multi-line notice on Node 20 about its releases after January 2027;
    // sluice pins its SDK version. Setting the variable to anything else shows it again.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    this.client = new S3Client({
      region: cfg.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1',
      ...(cfg.endpoint ? { endpoint: cfg.endpoint } : {}),
      forcePathStyle: cfg.force_path_style ?? false,
    });
    const id = createHash('sha1').update(`${ctx.projectDir}\0${cfg.path}\0${ctx.workerId}`).digest('hex').slice(0, 16);
    this.tmpRoot = path.join(os.tmpdir(), `sluice-s3-${id}`);
  }

  private key(rel: string): string {
    return this.prefix ? `${this.prefix}/${rel}` : rel;
  }

  async connect(): Promise<void> {
    // Files a crashed run was producing or uploading: its flushes are replayed from the WAL.
    await fsp.rm(this.tmpRoot, { recursive: true, force: true });
    await fsp.mkdir(this.tmpRoot, { recursive: true });
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
    } catch (err) {
      const e = this.explain(err);
      // A missing bucket or refused credentials will not heal by retrying: say so at start.
      if (e.permanent) throw e.error;
      this.log.warn({ err: e.error.message }, 'S3 is not reachable yet; flushes are retried');
      return;
    }
    await this.abortStaleUploads();
  }

  private async abortStaleUploads(): Promise<void> {
    try {
      const r = await this.client.send(new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: this.prefix ? `${this.prefix}/` : undefined }));
      for (const u of r.Uploads ?? []) {
        if (!u.Key || !u.UploadId || !u.Initiated || Date.now() - u.Initiated.getTime() < STALE_UPLOAD_MS) continue;
        await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.Key, UploadId: u.UploadId }));
        this.log.info({ key: u.Key }, 'aborted an incomplete multipart upload of an interrupted write');
      }
    } catch (err) {
      // Not every S3-compatible store lists uploads (s3rver does not); a lifecycle rule does the same.
      this.log.debug({ err: errorMessage(err) }, 'cannot list incomplete multipart uploads');
    }
  }

  async scratch(rel: string, tree: boolean): Promise<string> {
    const base = path.posix.basename(rel);
    return path.join(this.tmpRoot, `${randomUUID().slice(0, 8)}-${tree ? base : `.${base}.tmp`}`);
  }

  async commitFile(local: string, rel: string): Promise<void> {
    try {
      await this.upload(local, rel, this.cfg.upload_concurrency ?? 4);
    } finally {
      await fsp.rm(local, { force: true });
    }
  }

  async commitTree(local: string, rel: string): Promise<void> {
    try {
      const files = await filesUnder(local);
      const queue = [...files];
      const perFile = files.length > 1 ? 1 : (this.cfg.upload_concurrency ?? 4);
      const lanes = Math.min(files.length, this.cfg.upload_concurrency ?? 4);
      await Promise.all(
        Array.from({ length: lanes }, async () => {
          for (let f = queue.shift(); f; f = queue.shift()) await this.upload(path.join(local, f), `${rel}/${f}`, perFile);
        }),
      );
      crashPoint('s3-partitions-uploaded');
      const manifest = JSON.stringify({ files: files.map((f) => `${rel}/${f}`) });
      await this.call(`${rel}/_SUCCESS`, () => this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.key(`${rel}/_SUCCESS`), Body: manifest, ContentType: 'application/json' })));
    } finally {
      await fsp.rm(local, { recursive: true, force: true });
    }
  }

  private async upload(local: string, rel: string, queueSize: number): Promise<void> {
    const up = new Upload({
      client: this.client,
      params: { Bucket: this.bucket, Key: this.key(rel), Body: fs.createReadStream(local) },
      partSize: (this.cfg.part_size_mb ?? 8) * 1024 * 1024,
      queueSize,
      leavePartsOnError: false,
    });
    try {
      await up.done();
    } catch (err) {
      throw this.explain(err, rel).error;
    }
  }

  async list(relDir: string): Promise<StoredEntry[]> {
    const out: StoredEntry[] = [];
    const pfx = `${this.key(relDir)}/`;
    let token: string | undefined;
    do {
      const r = await this.call(relDir, () => this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: pfx, Delimiter: '/', ContinuationToken: token })));
      for (const o of r.Contents ?? []) if (o.Key) out.push({ name: o.Key.slice(pfx.length), mtimeMs: o.LastModified?.getTime() ?? 0 });
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  async readable(rel: string): Promise<string> {
    // Only immutable objects are read back (dedupe key files), so a local copy stays valid.
    const file = path.join(this.tmpRoot, 'cache', ...rel.split('/'));
    if (fs.existsSync(file)) return file;
    const r = await this.call(rel, () => this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.key(rel) })));
    await fsp.mkdir(path.dirname(file), { recursive: true });
    const tmp = `${file}.${randomUUID().slice(0, 8)}.tmp`;
    await fsp.writeFile(tmp, await r.Body!.transformToByteArray());
    await fsp.rename(tmp, file);
    return file;
  }

  async remove(rel: string): Promise<void> {
    await this.call(rel, () => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.key(rel) })));
  }

  async close(): Promise<void> {
    this.client.destroy();
    await fsp.rm(this.tmpRoot, { recursive: true, force: true });
  }

  private async call<T>(rel: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw this.explain(err, rel).error;
    }
  }

  /** One clear line per failure; `permanent` when retrying cannot help without a fix. */
  private explain(err: unknown, rel?: string): { error: SluiceError; permanent: boolean } {
    const name = (err as { name?: string; Code?: string }).name ?? '';
    const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
    const at = `${this.where}${rel ? `/${rel}` : ''}`;
    let msg: string;
    let permanent = false;
    if (name === 'NoSuchBucket' || (name === 'NotFound' && !rel) || (status === 404 && !rel)) {
      msg = `bucket "${this.bucket}" does not exist${this.cfg.endpoint ? ` at ${this.cfg.endpoint}` : ''}; create it or fix the sink's path`;
      permanent = true;
    } else if (['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'Forbidden', 'CredentialsProviderError'].includes(name) || status === 403) {
      msg = `access to ${at} denied (${name || status}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the AWS profile) and the bucket policy`;
      permanent = true;
    } else {
      msg = `${at}: ${errorMessage(err) || name || 'request failed'}`;
    }
    return { error: new SluiceError('SINK', msg, { cause: err, retryable: true }), permanent };
  }
}
