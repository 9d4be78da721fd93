import fsp from 'node:fs/promises';
import path from 'node:path';
import { SluiceError } from '../errors.js';
import type { PartitionSnapshot } from './window-store.js';
import type { PartState } from './windows.js';

/**
 * What the stateful models whose state stays in the worker's WAL directory have in common (a
 * stream join, a deduplication, a materialised view): the state store's side of WindowSet
 * (`window_state`, which validate refuses for them: never reached), and their state files.
 */
export abstract class LocalStateOperator {
  partitioned = false;
  readonly rowsDirty = new Set<string>();
  /** The state files (names in the model's state directory) the last commit lists. */
  protected files: string[] = [];

  /** `what`: the kind of model, for the message of a call that cannot happen ("a stream join"). */
  constructor(private readonly what: string) {}

  /** Bytes of the state files in `dir`. */
  protected async fileBytes(dir: string): Promise<number> {
    let bytes = 0;
    for (const f of this.files) bytes += (await fsp.stat(path.join(dir, f)).catch(() => ({ size: 0 }))).size;
    return bytes;
  }

  revisionsOf(): Record<string, number> | null {
    return null;
  }
  held(): ReadonlyMap<string, PartState> {
    return new Map();
  }
  heldAfter(): ReadonlyMap<string, PartState> {
    return new Map();
  }
  dirtyAfter(_part: string): boolean {
    return false;
  }
  async dropPart(_part: string): Promise<void> {
    throw this.unstored();
  }
  async loadPart(_part: string, _snap: PartitionSnapshot, _tmpDir: string): Promise<void> {
    throw this.unstored();
  }
  async exportPart(_part: string, _tmpDir: string): Promise<Buffer> {
    throw this.unstored();
  }
  private unstored(): SluiceError {
    return new SluiceError('INTERNAL', `${this.what} keeps no state in window_state`);
  }
}
