import type { Lineage, LineageNode } from '../lineage.js';
import { esc } from './html.js';

const NODE_H = 46;
const ROW_GAP = 22;
const COL_GAP = 90;
const PAD = 20;
const CHAR_W = 7.6;

interface Placed {
  node: LineageNode;
  x: number;
  y: number;
  w: number;
}

/**
 * Layered layout: sources in the first column, each model one column right of its deepest
 * input, every sink in the last column; within a column, nodes sorted by the mean row of their
 * inputs (fewer crossings).
 */
export function layout(g: Lineage): { placed: Placed[]; width: number; height: number; routes: Map<string, { x: number; y: number }[]> } {
  const preds = (id: string) => g.edges.filter((e) => e.to === id).map((e) => e.from);
  const layer = new Map<string, number>();
  const depth = (id: string, seen = new Set<string>()): number => {
    if (layer.has(id)) return layer.get(id)!;
    const n = g.nodes.find((x) => x.id === id)!;
    if (n.kind === 'source' || seen.has(id)) return 0;
    seen.add(id);
    const d = Math.max(0, ...preds(id).map((p) => depth(p, seen) + 1));
    layer.set(id, d);
    return d;
  };
  for (const n of g.nodes) if (n.kind !== 'sink') layer.set(n.id, depth(n.id));
  const lastModel = Math.max(0, ...g.nodes.filter((n) => n.kind !== 'sink').map((n) => layer.get(n.id)!));
  for (const n of g.nodes) if (n.kind === 'sink') layer.set(n.id, lastModel + 1);

  const columns: LineageNode[][] = [];
  for (const n of g.nodes) (columns[layer.get(n.id)!] ??= []).push(n);
  const row = new Map<string, number>();
  columns.forEach((col) => {
    const score = (n: LineageNode) => {
      const ps = preds(n.id).filter((p) => row.has(p));
      return ps.length ? ps.reduce((s, p) => s + row.get(p)!, 0) / ps.length : Number.MAX_SAFE_INTEGER;
    };
    col.sort((a, b) => score(a) - score(b));
    for (const [i, n] of col.entries()) row.set(n.id, i);
  });

  const width = (n: LineageNode) => Math.max(120, Math.round(Math.max(n.name.length, (n.type ?? '').length + n.kind.length + 3) * CHAR_W) + 28);
  const tallest = Math.max(1, ...columns.map((c) => c?.length ?? 0));
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * ROW_GAP;
  const placed: Placed[] = [];
  let x = PAD;
  for (const col of columns) {
    if (!col) continue;
    const colW = Math.max(...col.map(width));
    const colH = col.length * NODE_H + (col.length - 1) * ROW_GAP;
    let y = (height - colH) / 2;
    for (const n of col) {
      placed.push({ node: n, x, y, w: colW });
      y += NODE_H + ROW_GAP;
    }
    x += colW + COL_GAP;
  }
  // An edge that skips columns is routed around the nodes of the columns it crosses: through a
  // lane below them (instead of straight behind a node, which would read as passing through it).
  const colOf = new Map(placed.map((p) => [p.node.id, layer.get(p.node.id)!]));
  const routes = new Map<string, { x: number; y: number }[]>();
  let bottom = height;
  let lane = 0;
  for (const e of g.edges) {
    const a = colOf.get(e.from);
    const b = colOf.get(e.to);
    if (a === undefined || b === undefined || b - a < 2) continue;
    const pts: { x: number; y: number }[] = [];
    const y = height - PAD + 6 + lane * 10;
    lane++;
    for (let c = a + 1; c < b; c++) {
      const inCol = placed.filter((p) => colOf.get(p.node.id) === c);
      if (!inCol.length) continue;
      const x0 = inCol[0].x;
      pts.push({ x: x0 - 10, y }, { x: x0 + inCol[0].w + 10, y });
    }
    routes.set(`${e.from}>${e.to}`, pts);
    bottom = Math.max(bottom, y + PAD);
  }
  return { placed, width: x - COL_GAP + PAD, height: bottom, routes };
}

/** The lineage graph as an inline SVG; each node links to its section of the page. */
export function lineageSvg(g: Lineage): string {
  const { placed, width, height, routes } = layout(g);
  const at = new Map(placed.map((p) => [p.node.id, p]));
  const edges = g.edges
    .map((e) => {
      const a = at.get(e.from);
      const b = at.get(e.to);
      if (!a || !b) return '';
      const x1 = a.x + a.w;
      const y1 = a.y + NODE_H / 2;
      const x2 = b.x - 6;
      const y2 = b.y + NODE_H / 2;
      const pts = [{ x: x1, y: y1 }, ...(routes.get(`${e.from}>${e.to}`) ?? []), { x: x2, y: y2 }];
      let d = `M${x1},${y1}`;
      for (let i = 1; i < pts.length; i++) {
        const p = pts[i - 1];
        const q = pts[i];
        const mx = (p.x + q.x) / 2;
        d += p.y === q.y ? ` L${q.x},${q.y}` : ` C${mx},${p.y} ${mx},${q.y} ${q.x},${q.y}`;
      }
      return `<path class="edge" data-from="${esc(e.from)}" data-to="${esc(e.to)}" d="${d}" marker-end="url(#arrow)"/>`;
    })
    .join('\n');
  const nodes = placed
    .map(({ node: n, x, y, w }) => {
      const rx = n.kind === 'source' ? NODE_H / 2 : n.kind === 'sink' ? 12 : 6;
      const sub = n.kind + (n.type ? ` · ${n.type}` : '');
      return (
        `<a href="#${esc(n.id.replace('.', '-'))}" class="node-link"><g class="node ${n.kind}" data-id="${esc(n.id)}" transform="translate(${x},${y})">` +
        `<title>${esc(`${n.kind} ${n.name}${n.type ? ` (${n.type})` : ''}`)}</title>` +
        `<rect width="${w}" height="${NODE_H}" rx="${rx}" ry="${rx}"/>` +
        `<text class="kind" x="${w / 2}" y="17">${esc(sub)}</text>` +
        `<text class="name" x="${w / 2}" y="35">${esc(n.name)}</text></g></a>`
      );
    })
    .join('\n');
  return `<svg id="lineage" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="lineage graph">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#64748b"/></marker></defs>
${edges}
${nodes}
</svg>`;
}
