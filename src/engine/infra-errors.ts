import { SluiceError, errorMessage } from '../errors.js';

/**
 * The one place that tells an error a message caused from one its surroundings caused. A
 * message's fault (bad bytes, a type conflict, a model failing on its values) sends that
 * message to the DLQ. The surroundings' fault (a full or failing disk, a permission, memory)
 * would fail any message alike: it must never dead-letter or ack anything; the pipeline
 * pauses and retries the same batch until the cause is fixed.
 */
export type InfraKind = 'disk full' | 'disk error' | 'permission denied' | 'read-only file system' | 'out of memory' | 'too many open files';

const BY_ERRNO: Record<string, InfraKind> = {
  ENOSPC: 'disk full',
  EDQUOT: 'disk full',
  EIO: 'disk error',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  EROFS: 'read-only file system',
  ENOMEM: 'out of memory',
  EMFILE: 'too many open files',
  ENFILE: 'too many open files',
};

/** DuckDB reports these in its message text (its errors carry no errno). */
const BY_TEXT: [RegExp, InfraKind][] = [
  [/No space left on device|Disk quota exceeded|ENOSPC/i, 'disk full'],
  [/Read-only file system|EROFS/i, 'read-only file system'],
  [/Permission denied|EACCES/i, 'permission denied'],
  [/Input\/output error|EIO\b/i, 'disk error'],
  [/Too many open files|EMFILE/i, 'too many open files'],
  [/^Out of Memory Error|Cannot allocate memory|failed to allocate/i, 'out of memory'],
  // Any other failure to read or write a file DuckDB reports as an IO Error: it is about the
  // file, never about a message's values.
  [/^IO Error/i, 'disk error'],
];

/** What kind of infrastructure failure `err` is, or undefined when it is not one. */
export function infraKind(err: unknown): InfraKind | undefined {
  for (let e: unknown = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof SluiceError && e.code === 'INFRA') return (e as InfraError).kind;
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && BY_ERRNO[code]) return BY_ERRNO[code];
    const text = errorMessage(e);
    for (const [re, kind] of BY_TEXT) if (re.test(text)) return kind;
  }
  return undefined;
}

const FIX: Record<InfraKind, string> = {
  'disk full': 'free space on that file system (or move the directory to a larger one)',
  'disk error': 'check the disk and the path (dmesg shows device errors)',
  'permission denied': 'give the sluice user write access to that path',
  'read-only file system': 'remount the file system read-write or move the directory',
  'out of memory': 'lower batch_size or raise duckdb.memory_limit within what the machine has',
  'too many open files': 'raise the open-file limit (ulimit -n)',
};

/** An infrastructure failure: retryable, never a message's fault. */
export class InfraError extends SluiceError {
  constructor(
    readonly kind: InfraKind,
    readonly where: string,
    cause: unknown,
  ) {
    const path = /["'](\/[^"']+)["']/.exec(errorMessage(cause))?.[1] ?? /(\/[^\s:,'"]+)/.exec(errorMessage(cause))?.[1];
    super('INFRA', `${kind} while ${where}${path ? ` (${path})` : ''}: ${firstLine(errorMessage(cause))}; ${FIX[kind]}`, { cause, retryable: true });
    this.name = 'InfraError';
  }
}

function firstLine(s: string): string {
  return s.split('\n')[0].trim();
}

/** `err` as an InfraError when it is one (see infraKind), else undefined. */
export function asInfraError(err: unknown, where: string): InfraError | undefined {
  if (err instanceof InfraError) return err;
  const kind = infraKind(err);
  return kind ? new InfraError(kind, where, err) : undefined;
}
