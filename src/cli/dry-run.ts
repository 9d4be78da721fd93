import type { DryRunResult } from '../engine/pipeline.js';
import { formatTable } from './format.js';

/** A dry run's batch as `sluice run --dry-run` prints it. */
export function renderDryRun(r: DryRunResult | undefined): string {
  if (!r || r.messages === 0) return 'no messages\n';
  let out = `dry run: ${r.messages} messages, nothing written or acknowledged\n`;
  for (const o of r.outputs) out += `\n${o.model} (${o.rows.length} rows)\n${formatTable(o.columns, o.rows)}\n`;
  for (const f of r.failures) out += `\nwould dead-letter message ${JSON.stringify(f.coords)} [${f.stage}]: ${f.error}\n`;
  for (const line of r.tests) out += `\n${line}\n`;
  return out;
}
