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
  const lock = path.join(os.tmpdir(), `sluice-${name}-tests.lock`);
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      fs.mkdirSync(lock);
      fs.writeFileSync(path.join(lock, 'pid'), String(process.pid));
      return () => fs.rmSync(lock, { recursive: true, force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = Number(fs.readFileSync(path.join(lock, 'pid'), { encoding: 'utf8', flag: 'a+' }) || 0);
      if (owner && !alive(owner)) fs.rmSync(lock, { recursive: true, force: true });
      if (Date.now() > end) throw new Error(`the ${name} test lock ${lock} is held by pid ${owner}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}
