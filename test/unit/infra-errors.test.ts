import { describe, expect, it } from 'vitest';
import { SluiceError } from '../../src/errors.js';
import { asInfraError, infraKind } from '../../src/engine/infra-errors.js';

// Which errors are the surroundings' fault (pause and retry, never dead-letter) and which are a
// message's (DLQ): the classification the pipeline acts on, case by case.

const errno = (code: string, message = `${code}: something`) => Object.assign(new Error(message), { code });

describe('infrastructure errors', () => {
  it.each([
    [errno('ENOSPC', 'ENOSPC: no space left on device, write'), 'disk full'],
    [errno('EDQUOT'), 'disk full'],
    [errno('EIO'), 'disk error'],
    [errno('EACCES', "EACCES: permission denied, open '/data/wal/state.json'"), 'permission denied'],
    [errno('EPERM'), 'permission denied'],
    [errno('EROFS'), 'read-only file system'],
    [errno('ENOMEM'), 'out of memory'],
    [errno('EMFILE'), 'too many open files'],
    [new Error('IO Error: Could not write file "/w/wal/models/m/.000000000001_a_b.parquet.tmp": No space left on device'), 'disk full'],
    [new Error('IO Error: Cannot open file "/w/x.parquet": Permission denied'), 'permission denied'],
    [new Error('IO Error: Could not read from file "/w/x": Input/output error'), 'disk error'],
    [new Error('IO Error: No files found that match the pattern "/refs/*.csv"'), 'disk error'],
    [new Error('Out of Memory Error: failed to allocate data of size 2.0 GiB (1.9 GiB/2.0 GiB used)'), 'out of memory'],
    [new SluiceError('SINK', 'parquet sink: writing orders failed', { cause: errno('ENOSPC') }), 'disk full'],
  ])('%s is %s', (err, kind) => {
    expect(infraKind(err)).toBe(kind);
    const e = asInfraError(err, 'writing a batch to the WAL')!;
    expect(e.code).toBe('INFRA');
    expect(e.retryable).toBe(true);
    expect(e.message).toMatch(new RegExp(`^${kind} while writing a batch to the WAL`));
  });

  it.each([
    "Conversion Error: Could not convert string 'x' to INT32",
    'Invalid Input Error: Malformed JSON at byte 3 of input',
    'Binder Error: Referenced column "nope" not found in FROM clause!',
    'Constraint Error: NOT NULL constraint failed',
    'Out of Range Error: Overflow in multiplication of INT32',
    'Invalid Input Error: refund above 100',
  ])("a message's fault is not: %s", (text) => {
    expect(infraKind(new Error(text))).toBeUndefined();
    expect(asInfraError(new Error(text), 'running model m')).toBeUndefined();
  });

  it('names the path it failed on and how to fix it', () => {
    const e = asInfraError(new Error('IO Error: Could not write file "/data/wal/models/p/x.tmp": No space left on device'), 'writing the WAL segment of model p')!;
    expect(e.message).toBe(
      'disk full while writing the WAL segment of model p (/data/wal/models/p/x.tmp): IO Error: Could not write file "/data/wal/models/p/x.tmp": No space left on device; free space on that file system (or move the directory to a larger one)',
    );
  });
});
