import type { ConnectorContext, PollLimits, RawMessage, Source, SourceChunk } from '../types.js';
import { ordinalKey } from '../file/file-source.js';
import { sleep } from '../../util/retry.js';
import type { GeneratorSourceConfig } from './generator-config.js';

export { generatorSourceSchema, type GeneratorSourceConfig } from './generator-config.js';

const PRODUCTS = [
  { sku: 'SKU-1001', name: 'Espresso beans 1kg', price: 24.9 },
  { sku: 'SKU-1002', name: 'Pour-over kettle', price: 59.0 },
  { sku: 'SKU-1003', name: 'Paper filters x100', price: 6.5 },
  { sku: 'SKU-1004', name: 'Burr grinder', price: 149.0 },
  { sku: 'SKU-1005', name: 'Ceramic mug', price: 12.0 },
  { sku: 'SKU-1006', name: 'Milk frother', price: 34.99 },
];
const NAMES = ['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Margaret', 'Ken'];
const CURRENCIES = ['EUR', 'USD', 'GBP'];

/** A small deterministic PRNG so a replay after a crash regenerates the same messages. */
function mulberry32(a: number): () => number {
  return () => {
    a |= 0;
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The order message number `n` for a given seed: the same every time. */
export function orderMessage(n: number, seed: number): string {
  const rnd = mulberry32(seed * 1_000_003 + n);
  const userId = 1 + Math.floor(rnd() * 500);
  const itemCount = Math.floor(rnd() * 4); // 0..3 items: some orders are empty
  const items = [];
  for (let i = 0; i < itemCount; i++) {
    const p = PRODUCTS[Math.floor(rnd() * PRODUCTS.length)];
    items.push({ sku: p.sku, name: p.name, quantity: 1 + Math.floor(rnd() * 3), price: p.price });
  }
  const placed = new Date(Date.UTC(2024, 0, 1) + n * 1000).toISOString();
  return JSON.stringify({
    order_id: n + 1,
    user: { id: userId, name: NAMES[userId % NAMES.length] },
    items,
    currency: CURRENCIES[userId % CURRENCIES.length],
    placed_at: placed,
  });
}

/** Synthetic order events, deterministic by ordinal; the ordinal is the position. */
export class GeneratorSource implements Source {
  private next = 0;
  private started = Date.now();
  private startOrdinal = 0;

  constructor(
    private readonly cfg: GeneratorSourceConfig,
    _ctx: ConnectorContext,
  ) {}

  async open(position: unknown): Promise<void> {
    const p = position as { ordinal?: number } | undefined;
    this.next = typeof p?.ordinal === 'number' ? p.ordinal : 0;
    this.started = Date.now();
    this.startOrdinal = this.next;
  }

  async poll(limits: PollLimits, signal: AbortSignal): Promise<SourceChunk | null> {
    const { count, rate } = this.cfg;
    if (count > 0 && this.next >= count) return null;
    let n = limits.maxMessages;
    if (count > 0) n = Math.min(n, count - this.next);
    if (rate > 0) {
      // Paced against the wall clock: what is due now, or wait for the next one.
      for (;;) {
        const due = Math.floor(((Date.now() - this.started) / 1000) * rate) - (this.next - this.startOrdinal);
        if (due > 0 || signal.aborted) {
          n = Math.max(0, Math.min(n, due));
          break;
        }
        await sleep(Math.max(1, Math.ceil(1000 / rate)), signal);
      }
    }
    const first = this.next;
    const messages: RawMessage[] = [];
    // Up to limits.maxBytes of payloads (the first message always): one left out is made again
    // for the next chunk (messages are deterministic by ordinal).
    let bytes = 0;
    let full = false;
    for (let i = 0; i < n; i++) {
      const ord = first + i;
      const bad = this.cfg.invalid_every > 0 && (ord + 1) % this.cfg.invalid_every === 0;
      const payload = bad ? `{"order_id": ${ord + 1}, "user": ` : orderMessage(ord, this.cfg.seed);
      const len = Buffer.byteLength(payload);
      if ((i > 0 || limits.strict) && bytes + len > limits.maxBytes) {
        full = true;
        break;
      }
      bytes += len;
      messages.push({ payload, coords: { ordinal: ord } });
    }
    this.next += messages.length;
    return { messages, bytes, full, position: { ordinal: this.next }, first: ordinalKey(first), last: ordinalKey(this.next - 1) };
  }

  async ack(_chunk: SourceChunk): Promise<void> {}

  async close(): Promise<void> {}
}
