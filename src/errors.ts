/**
 * The one error class of sluice. The runtime acts on `code` and `retryable`, never on the
 * message text: CONFIG -> exit 2; CONNECT -> reconnect with backoff; DECODE / TRANSFORM ->
 * the message goes to the DLQ; SINK -> the WAL is kept and the write retried.
 */
export type ErrorCode =
  | 'CONFIG'
  | 'USAGE'
  | 'CONNECT'
  | 'DECODE'
  | 'TRANSFORM'
  | 'SINK'
  | 'WAL'
  /** The surroundings failed (disk full, IO error, permissions, memory): pause and retry, never dead-letter. */
  | 'INFRA'
  | 'INTERNAL';

export class SluiceError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  /**
   * A sink error that retrying cannot fix (rows the target rejects as they are): the sink's
   * on_error applies at once instead of after retry.max_attempts.
   */
  readonly permanent: boolean;
  /**
   * How long the target asked to be left alone before the next attempt (an HTTP Retry-After),
   * in ms: a hint the retry policy waits at least this long for.
   */
  readonly retryAfterMs?: number;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; retryable?: boolean; permanent?: boolean; retryAfterMs?: number } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SluiceError';
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.permanent = options.permanent ?? false;
    if (options.retryAfterMs !== undefined) this.retryAfterMs = options.retryAfterMs;
  }
}

/** One config problem, located in a file. */
export interface ConfigIssue {
  file: string;
  line?: number;
  key?: string;
  message: string;
}

/** Every config problem found, reported together (exit code 2). */
export class ConfigError extends SluiceError {
  readonly issues: ConfigIssue[];

  constructor(issues: ConfigIssue[]) {
    // Files in the order they were read; within a file, by line.
    const fileOrder = [...new Set(issues.map((i) => i.file))];
    const sorted = issues
      .map((i, n) => ({ i, n }))
      .sort((a, b) => fileOrder.indexOf(a.i.file) - fileOrder.indexOf(b.i.file) || (a.i.line ?? 0) - (b.i.line ?? 0) || a.n - b.n)
      .map((x) => x.i);
    super('CONFIG', formatIssues(sorted));
    this.name = 'ConfigError';
    this.issues = sorted;
  }
}

export function formatIssue(i: ConfigIssue): string {
  const where = i.line !== undefined ? `${i.file}:${i.line}` : i.file;
  const key = i.key ? ` ${i.key}:` : '';
  return `${where}:${key} ${i.message}`;
}

export function formatIssues(issues: ConfigIssue[]): string {
  return issues.map(formatIssue).join('\n');
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
