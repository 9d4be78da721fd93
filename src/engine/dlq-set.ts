import { SluiceError } from '../errors.js';
import type { DeadLetter, DeadLetterQueue } from '../connectors/types.js';

/**
 * The DLQs of a pipeline of two sources (a stream join of them) as one: a batch's dead letters
 * go to the DLQ of the source its messages came from (of()), and what the WAL commits is each
 * one's mark. Rows a sink turns away (on_error: dlq) have no one source: they go to the first
 * source's DLQ that is configured.
 */
export class DlqSet implements DeadLetterQueue {
  private readonly dlqs = new Map<string, DeadLetterQueue | undefined>();

  add(source: string, dlq: DeadLetterQueue | undefined): void {
    this.dlqs.set(source, dlq);
  }

  /** The DLQ of a source (undefined when it has none configured). */
  of(source: string | undefined): DeadLetterQueue | undefined {
    return source === undefined ? this.first() : this.dlqs.get(source);
  }

  private first(): DeadLetterQueue | undefined {
    return [...this.dlqs.values()].find((d) => d !== undefined);
  }

  async append(records: DeadLetter[]): Promise<void> {
    const dlq = this.first();
    if (!dlq) throw new SluiceError('CONFIG', `none of the sources ${[...this.dlqs.keys()].join(', ')} has a dlq configured`);
    await dlq.append(records);
  }

  mark(): unknown {
    return Object.fromEntries([...this.dlqs].map(([name, d]) => [name, d?.mark()]));
  }

  async recover(mark: unknown): Promise<void> {
    const at = mark && typeof mark === 'object' ? (mark as Record<string, unknown>) : {};
    for (const [name, d] of this.dlqs) await d?.recover(at[name]);
  }

  async inspect(limit: number): Promise<DeadLetter[]> {
    const out: DeadLetter[] = [];
    for (const d of this.dlqs.values()) if (d && out.length < limit) out.push(...(await d.inspect(limit - out.length)));
    return out;
  }

  /** Closes each (the first error thrown once all are closed). */
  async close(): Promise<void> {
    let first: unknown;
    for (const d of this.dlqs.values()) {
      try {
        await d?.close();
      } catch (err) {
        first ??= err;
      }
    }
    if (first !== undefined) throw first;
  }
}
