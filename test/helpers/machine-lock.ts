import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { alive } from './pg-outage.js';

/**
 * Holds a machine-wide test lock `name` (a directory naming its owner's pid) until the returned
 * release is called. Test files that stop or restart a shared service (PostgreSQL's outage test,
 * RabbitMQ's broker restart) and the files that would break meanwhile take the same lock, so
 * they never overlap, in one `npm test` or across runs. A lock whose owner died is taken over.
 */
export async function machineLock(name: string, timeoutMs = 15 * 60_000): Promise<() => void> {
  const lock = exclusivePath(name);
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      fs.mkdirSync(lock);
      fs.writeFileSync(path.join(lock, 'pid'), String(process.pid));
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = exclusiveOwner(name);
      if (Date.now() > end) throw new Error(`the ${name} test lock ${lock} is held by pid ${owner}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  const release = () => fs.rmSync(lock, { recursive: true, force: true });
  // Then the holders of the shared lock (see sharedMachineLock) finish first.
  for (;;) {
    const readers = liveReaders(name);
    if (readers.length === 0) return release;
    if (Date.now() > end) {
      release();
      throw new Error(`the ${name} test lock waited too long for its shared holders (pids ${readers.join(', ')})`);
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

/**
 * Holds machine-wide test lock `name` shared until the returned release is called: any number of
 * shared holders at once, none while machineLock(name) is held. Test files that only need the
 * service up take it (PostgreSQL's sink tests), so they run beside each other and never beside a
 * file that stops the service (which takes machineLock).
 */
export async function sharedMachineLock(name: string, timeoutMs = 15 * 60_000): Promise<() => void> {
  const dir = readersPath(name);
  fs.mkdirSync(dir, { recursive: true });
  const mine = path.join(dir, `${process.pid}-${Math.random().toString(36).slice(2)}`);
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (exclusiveOwner(name) === 0) {
      fs.writeFileSync(mine, String(process.pid));
      // An exclusive holder that came in between waits for this one to go: step back for it.
      if (exclusiveOwner(name) === 0) return () => fs.rmSync(mine, { force: true });
      fs.rmSync(mine, { force: true });
    }
    if (Date.now() > end) throw new Error(`the ${name} test lock is held by pid ${exclusiveOwner(name)}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

function exclusivePath(name: string): string {
  return path.join(os.tmpdir(), `sluice-${name}-tests.lock`);
}

function readersPath(name: string): string {
  return path.join(os.tmpdir(), `sluice-${name}-tests.readers`);
}

/** The live pid holding machineLock(name), or 0 (a lock whose owner died is removed). */
function exclusiveOwner(name: string): number {
  const lock = exclusivePath(name);
  if (!fs.existsSync(lock)) return 0;
  const owner = Number(fs.readFileSync(path.join(lock, 'pid'), { encoding: 'utf8', flag: 'a+' }) || 0);
  if (owner && !alive(owner)) {
    fs.rmSync(lock, { recursive: true, force: true });
    return 0;
  }
  // Just made, its pid not written yet: held.
  return owner || -1;
}

/** The live pids holding sharedMachineLock(name) (entries of dead ones are removed). */
function liveReaders(name: string): number[] {
  const dir = readersPath(name);
  const out: number[] = [];
  for (const f of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
    const pid = Number(f.split('-')[0]);
    if (alive(pid)) out.push(pid);
    else fs.rmSync(path.join(dir, f), { force: true });
  }
  return out;
}
