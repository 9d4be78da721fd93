import fs from 'node:fs';

/**
 * Polls a child's peak resident set (VmHWM in /proc/<pid>/status) until it exits; returns a
 * getter. VmHWM is the kernel's high-water mark for the whole process, so DuckDB's worker
 * threads (in-process) are covered; the last reading before exit is the peak up to then.
 */
export function trackPeakRss(child, everyMs = 50) {
  let peak = 0;
  const read = () => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) peak = Math.max(peak, Number(m[1]) * 1024);
    } catch {
      // the process is gone; keep the last reading
    }
  };
  read();
  const poll = setInterval(read, everyMs);
  child.on('exit', () => clearInterval(poll));
  return () => peak;
}

/** A numeric flag: `--name N` or `--name=N`; a missing or non-numeric value is an error. */
export function arg(name, def) {
  const argv = process.argv.slice(2);
  let raw;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === `--${name}`) raw = argv[i + 1];
    else if (argv[i].startsWith(`--${name}=`)) raw = argv[i].slice(name.length + 3);
    else continue;
    if (raw === undefined || raw === '' || !Number.isFinite(Number(raw)) || Number(raw) < 0) {
      console.error(`--${name} needs a non-negative number, got ${raw === undefined ? 'nothing' : JSON.stringify(raw)}`);
      process.exit(2);
    }
  }
  return raw === undefined ? def : Number(raw);
}

/** The median; for an even count, the mean of the two middle values. */
export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
