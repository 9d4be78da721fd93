/** Renders rows as an aligned text table. */
export function formatTable(columns: { name: string; type?: string }[], rows: Record<string, unknown>[], maxWidth = 40): string {
  if (columns.length === 0) return '(no columns)';
  const cell = (v: unknown): string => {
    const s = v === null || v === undefined ? 'NULL' : typeof v === 'object' ? JSON.stringify(v) : String(v);
    return s.length > maxWidth ? s.slice(0, maxWidth - 1) + '…' : s;
  };
  const header = columns.map((c) => c.name);
  const body = rows.map((r) => columns.map((c) => cell(r[c.name])));
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]))
      .join(' | ')
      .trimEnd();
  const sep = widths.map((w) => '-'.repeat(w)).join('-+-');
  return [line(header), sep, ...body.map(line)].join('\n');
}

/** "stateless", or "stateful: why". */
export function statefulness(reasons: string[]): string {
  return reasons.length ? `stateful: ${reasons.join('; ')}` : 'stateless';
}
