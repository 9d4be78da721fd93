// Throwaway: writes examples/clickstream/data/clicks.ndjson (deterministic).
import fs from 'node:fs';

let seed = 20260302;
function rnd() { // mulberry32
  seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const int = (a, b) => a + Math.floor(rnd() * (b - a + 1));
const pick = (xs) => xs[Math.floor(rnd() * xs.length)];

const T0 = Date.UTC(2026, 2, 2, 9, 0, 0);
const SPAN = 30 * 60_000;
const USERS = 40;
const CUR = ['EUR', 'USD', 'GBP'];
const PAGES = ['/', '/search', '/product/espresso-beans', '/product/grinder', '/product/milk-frother', '/product/mug', '/product/filters', '/cart'];

const events = [];
for (let u = 1; u <= USERS; u++) {
  const user = `u${String(u).padStart(2, '0')}`;
  const currency = CUR[u % 3];
  let t = T0 + int(0, 120_000);
  while (t < T0 + SPAN) {
    const n = int(3, 25);
    for (let k = 0; k < n && t < T0 + SPAN; k++) {
      const last = k === n - 1 && rnd() < 0.45;
      const page = last ? '/checkout' : pick(PAGES);
      const amount = page === '/checkout' ? int(5, 250) * 100 - pick([0, 1, 5, 51]) : 0;
      events.push({ t, user, page, currency, amount });
      t += int(1_000, 20_000);
    }
    t += int(45_000, 400_000);
  }
}
// Arrival order: event time plus up to 10 s of delay.
for (const e of events) e.key = e.t + int(0, 10_000);
events.sort((a, b) => a.key - b.key || a.t - b.t);

const LATENESS = 15_000;
const B = 50; // batch_size of the example
const at = (hh, mm, ss) => Date.UTC(2026, 2, 2, hh, mm, ss);
// Late events: event time, and the head of the stream (largest event time read) they arrive after.
const late = [
  { t: at(9, 11, 20), after: at(9, 13, 35), user: 'u07', page: '/checkout', amount: 4200, want: { revenue: 'update', moving: 'partial', sessions: 'drop' } },
  { t: at(9, 19, 40), after: at(9, 21, 35), user: 'u22', page: '/checkout', amount: 12999, want: { revenue: 'update', moving: 'partial', sessions: 'drop' } },
  { t: at(9, 14, 30), after: at(9, 18, 35), user: 'u13', page: '/checkout', amount: 3150, want: { revenue: 'gone' } },
  { t: at(9, 5, 10), after: at(9, 24, 0), user: 'u07', page: '/product/grinder', amount: 0, want: { moving: 'dlq' } },
  { t: at(9, 6, 50), after: at(9, 27, 0), user: 'u31', page: '/checkout', amount: 8900, want: { moving: 'dlq' } },
];
const lines = events.map((e) => ({ ...e, late: false }));
for (const l of late) {
  let p = 0;
  let max = Number.NEGATIVE_INFINITY;
  while (max < l.after) max = Math.max(max, lines[p++].t);
  lines.splice(p, 0, { t: l.t, user: l.user, page: l.page, currency: CUR[Number(l.user.slice(1)) % 3], amount: l.amount, late: l });
}
// Check every classification holds whatever the batch boundaries (batches of 1..B lines).
const MIN = 60_000;
let prefix = Number.NEGATIVE_INFINITY;
const maxBefore = lines.map((x) => { const m = prefix; prefix = Math.max(prefix, x.t); return m; });
for (let p = 0; p < lines.length; p++) {
  const x = lines[p];
  const hi = maxBefore[p] - LATENESS;
  const lo = (p - B + 1 > 0 ? maxBefore[p - B + 1] : Number.NEGATIVE_INFINITY) - LATENESS;
  const start = Math.floor(x.t / MIN) * MIN;
  const cls = (fired) => ({
    revenue: start + MIN > fired ? 'on time' : start + MIN + 2 * MIN > fired ? 'update' : 'gone',
    moving: start + 5 * MIN <= fired ? 'dlq' : start + MIN <= fired ? 'partial' : 'on time',
    sessions: x.t < fired ? 'drop' : 'on time',
  });
  const a = cls(lo), b = cls(hi);
  if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`line ${p}: depends on the batches: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`);
  if (!x.late && (a.revenue !== 'on time' || a.moving !== 'on time' || a.sessions !== 'on time')) throw new Error(`line ${p} late`);
  if (x.late) console.log(p, new Date(x.t).toISOString(), JSON.stringify(a), JSON.stringify(x.late.want));
}
const out = lines.map((x, i) => JSON.stringify({ id: i + 1, ts: new Date(x.t).toISOString(), user: x.user, page: x.page, currency: x.currency, amount: x.amount }));
fs.writeFileSync(new URL('../examples/clickstream/data/clicks.ndjson', import.meta.url), `${out.join('\n')}\n`);
console.log('events', out.length, 'late ids', lines.flatMap((x, i) => (x.late ? [i + 1] : [])), 'purchases', lines.filter((x) => x.amount > 0).length);
console.log('first', out[0], '\nlast', out.at(-1));
