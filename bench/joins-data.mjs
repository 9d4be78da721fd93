// The stream-joins benchmark's input and model (bench/joins.mjs, bench/joins-baseline.mjs).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * The model (sluice reads `incoming`; the baseline the whole file's table). With `payments`, the
 * orders are read from `from` and the payments from `payments` (two sources; two files' tables).
 */
export const joinSql = (kind, from, payments = from) => `WITH o AS (SELECT order_id, customer_id, amount_cents, CAST(ts AS TIMESTAMP) AS ordered_at FROM ${from} WHERE kind = 'order'),
     p AS (SELECT order_id, method, CAST(ts AS TIMESTAMP) AS paid_at FROM ${payments} WHERE kind = 'payment')
SELECT o.order_id, o.customer_id, o.amount_cents, o.ordered_at, p.paid_at, p.method
FROM o ${kind.toUpperCase()} JOIN p ON p.order_id = o.order_id AND p.paid_at BETWEEN o.ordered_at AND o.ordered_at + INTERVAL 5 MINUTE
`;

/** The input file (written once per size, kept under bench/data). */
export function eventsFile(n) {
  const dir = path.join(ROOT, 'bench', 'data');
  const file = path.join(dir, `orders-payments-${n}.ndjson`);
  if (fs.existsSync(file)) return file;
  fs.mkdirSync(dir, { recursive: true });
  let s = 7;
  const rnd = () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648;
  };
  const t0 = Date.UTC(2026, 0, 1);
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  // Written in order of (time + delay) as generated: an event's key is never below its order's
  // time, so whatever is pending below the current order's time can be written.
  let pending = [];
  const flush = (below) => {
    pending.sort((a, b) => a[0] - b[0]);
    const k = pending.findIndex((e) => e[0] >= below);
    const out = k < 0 ? pending : pending.slice(0, k);
    pending = k < 0 ? [] : pending.slice(k);
    if (out.length) fs.writeSync(fd, `${out.map((e) => e[1]).join('\n')}\n`);
  };
  for (let i = 0; i < n; i++) {
    const t = t0 + i * 20;
    if (i % 50_000 === 0) flush(t);
    pending.push([t + rnd() * 10_000, `{"kind":"order","order_id":${i},"customer_id":${i % 5000},"amount_cents":${(i % 97) * 100},"ts":"${new Date(t).toISOString()}"}`]);
    const pt = rnd() < 0.8 ? t + Math.floor(rnd() * 270_000) : t + 360_000 + Math.floor(rnd() * 1_440_000);
    pending.push([pt + rnd() * 10_000, `{"kind":"payment","order_id":${i},"method":"${i % 3 ? 'card' : 'transfer'}","ts":"${new Date(pt).toISOString()}"}`]);
  }
  flush(Number.POSITIVE_INFINITY);
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
  return file;
}

/**
 * The events file split in two, the orders and the payments, each in the order of the file (for
 * a join of two sources), written once beside it: { orders, payments }.
 */
export function splitFiles(n) {
  const file = eventsFile(n);
  const out = { orders: file.replace(/\.ndjson$/, '.orders.ndjson'), payments: file.replace(/\.ndjson$/, '.payments.ndjson') };
  if (fs.existsSync(out.orders) && fs.existsSync(out.payments)) return out;
  const text = fs.readFileSync(file, 'utf8');
  const fds = { order: fs.openSync(`${out.orders}.tmp`, 'w'), payment: fs.openSync(`${out.payments}.tmp`, 'w') };
  const bufs = { order: [], payment: [] };
  const put = (k, line) => {
    bufs[k].push(line);
    if (bufs[k].length === 50_000) fs.writeSync(fds[k], `${bufs[k].splice(0).join('\n')}\n`);
  };
  for (let a = 0; a < text.length; ) {
    let b = text.indexOf('\n', a);
    if (b < 0) b = text.length;
    const line = text.slice(a, b);
    if (line) put(line.startsWith('{"kind":"order"') ? 'order' : 'payment', line);
    a = b + 1;
  }
  for (const k of ['order', 'payment']) {
    if (bufs[k].length) fs.writeSync(fds[k], `${bufs[k].join('\n')}\n`);
    fs.closeSync(fds[k]);
  }
  fs.renameSync(`${out.orders}.tmp`, out.orders);
  fs.renameSync(`${out.payments}.tmp`, out.payments);
  return out;
}
