import fs from 'node:fs';

/** Polls a child's peak resident set (VmHWM) until it exits; returns a getter. */
export function trackPeakRss(child, everyMs = 25) {
  let peak = 0;
  const poll = setInterval(() => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) peak = Math.max(peak, Number(m[1]) * 1024);
    } catch {
      // the process is gone; keep the last reading
    }
  }, everyMs);
  child.on('exit', () => clearInterval(poll));
  return () => peak;
}

export function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

export const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
