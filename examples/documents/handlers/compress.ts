import fs from 'node:fs';
import path from 'node:path';
import { defineHandler, periodic, ref, z } from 'sluice';

// Each document is compressed by gzip at three levels: three tasks (processes) per document,
// run by the subprocess pool; once all three are done (fan-in), one row says which level did
// best and how far it shrank the document. The target ratio of each category is a lookup,
// read when the run is ready and again every 30 seconds.

const Document = z.object({ id: z.number().int(), category: z.string(), title: z.string(), body: z.string() });
const Ratio = z.object({
  id: z.number().int(),
  category: z.string(),
  bytes: z.number().int(),
  best_level: z.number().int(),
  best_bytes: z.number().int(),
  ratio: z.number(),
  target: z.number(),
});

const TARGETS = path.join(import.meta.dirname ?? __dirname, '..', 'reference', 'targets.json');
let targets: Record<string, number> = {};
const loadTargets = () => {
  targets = JSON.parse(fs.readFileSync(TARGETS, 'utf8'));
};

export default defineHandler({
  from: ref('documents'),
  input: Document,
  output: Ratio,
  description: 'gzip at levels 1, 6 and 9 per document; the best',
  onReady(ctx) {
    loadTargets();
    ctx.log.info('targets loaded', { categories: Object.keys(targets).length });
  },
  periodic: {
    refreshTargets: periodic({ seconds: 30 }, loadTargets),
  },
  arrange(messages) {
    return messages.flatMap((m) => [1, 6, 9].map((level) => ({ args: ['-c', `-${level}`], stdin: m.value.body, message: m, metadata: { level } })));
  },
  onMessageComplete({ message, results }, ctx) {
    const doc = message.value;
    const sizes = results.map((r) => ({ level: Number(r.task.metadata?.level), bytes: r.stdoutBytes.length }));
    const best = sizes.reduce((a, b) => (b.bytes < a.bytes ? b : a));
    const bytes = Buffer.byteLength(doc.body);
    ctx.metrics.counter({ name: 'documents_compressed_total', help: 'Documents compressed at every level', labelNames: ['category'] }).inc({ category: doc.category });
    return { id: doc.id, category: doc.category, bytes, best_level: best.level, best_bytes: best.bytes, ratio: Math.round((best.bytes / bytes) * 1000) / 1000, target: targets[doc.category] ?? 1 };
  },
  onError(task, error) {
    // A signal (the machine under pressure) is worth another try; a gzip that fails is not.
    return error.kind === 'signal' ? 'retry' : 'fail';
  },
});
