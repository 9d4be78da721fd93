import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Project } from '../../project/project-loader.js';
import type { ModelReport } from '../../engine/validate.js';
import { maskConfig, maskText } from '../../util/secrets.js';
import { buildLineage, nodeId, type Lineage } from '../lineage.js';
import type { FixtureRun } from '../../engine/offline-runner.js';
import { esc } from './html.js';
import { lineageSvg } from './svg.js';
import { describeTest } from '../../project/data-test-config.js';
import { joinSummary, statefulness, stepKind, windowSummary } from '../format.js';

export interface DocsInput {
  project: Project;
  reports: ModelReport[];
  /** Models run on the project's fixtures (column types); undefined when there are none. */
  fixtureRun?: FixtureRun;
  generatedAt: Date;
}

interface ColumnRow {
  name: string;
  type?: string;
  /** Its type in the model's schema contract (config/models.yml), when declared. */
  declared?: string;
  description?: string;
  /** Its data tests, as labels. */
  tests: string[];
}

const anchor = (id: string) => id.replace('.', '-');

/** Columns of a model: output names and DuckDB types from the fixture run, with their YAML descriptions. */
function columnsOf(input: DocsInput, r: ModelReport): ColumnRow[] {
  const docs = new Map(r.model.columns.map((c) => [c.name.toLowerCase(), c]));
  const declared = new Map((r.model.contract?.columns ?? []).filter((c) => c.type).map((c) => [c.name.toLowerCase(), c.type!]));
  const out = input.fixtureRun?.outputs.get(r.model.name)?.columns;
  const names: { name: string; type?: string }[] = out?.length ? out : (r.analysis.outputColumns ?? []).map((name) => ({ name }));
  const rows: ColumnRow[] = names.map((c) => {
    const d = docs.get(c.name.toLowerCase());
    docs.delete(c.name.toLowerCase());
    return { name: c.name, type: c.type, declared: declared.get(c.name.toLowerCase()), description: d?.description, tests: testsOf(r, c.name) };
  });
  for (const d of docs.values()) rows.push({ name: d.name, declared: declared.get(d.name.toLowerCase()), description: d.description, tests: testsOf(r, d.name) });
  return rows;
}

/** A column's data tests as labels (`accepted_values [EUR, USD]`); undefined column: the model's own tests. */
function testsOf(r: ModelReport, column: string | undefined): string[] {
  return r.model.dataTests.filter((t) => t.column?.toLowerCase() === column?.toLowerCase()).map(describeTest);
}

function configTable(cfg: Record<string, unknown>): string {
  const rows = Object.entries(maskConfig(cfg))
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `<tr><th>${esc(k)}</th><td><code>${esc(typeof v === 'string' ? v : JSON.stringify(v))}</code></td></tr>`)
    .join('');
  return `<table class="kv">${rows}</table>`;
}

function links(ids: string[]): string {
  const text = (id: string) => `${id.slice(id.indexOf('.') + 1)}${id.startsWith('model.') ? '' : ` (${id.slice(0, id.indexOf('.'))})`}`;
  return ids.length ? ids.map((id) => `<a href="#${esc(anchor(id))}">${esc(text(id))}</a>`).join(', ') : '<span class="none">none</span>';
}

function modelSection(input: DocsInput, g: Lineage, r: ModelReport): string {
  const m = r.model;
  const id = nodeId('model', m.name);
  const up = g.edges.filter((e) => e.to === id).map((e) => e.from);
  const down = g.edges.filter((e) => e.from === id && e.to.startsWith('model.')).map((e) => e.to);
  const cols = columnsOf(input, r);
  const typed = cols.some((c) => c.type || c.declared);
  const typeCell = (c: ColumnRow) => {
    const t = c.declared ?? c.type;
    if (!t) return '<span class="none">?</span>';
    return `<code>${esc(t)}</code>${c.declared ? ' <span class="declared" title="declared in the schema contract">declared</span>' : ''}`;
  };
  const contract = m.contract
    ? `<tr><th>contract</th><td>new columns: <code>${esc(m.contract.newColumns)}</code>, type changes: <code>${esc(m.contract.typeChanges)}</code> (${m.contract.columns.length} declared column${m.contract.columns.length === 1 ? '' : 's'})</td></tr>`
    : '';
  const colRows = cols
    .map(
      (c) =>
        `<tr><td><code>${esc(c.name)}</code></td><td>${typeCell(c)}</td><td>${c.description ? esc(c.description) : '<span class="none">—</span>'}</td><td>${c.tests.map((t) => `<span class="test">${esc(t)}</span>`).join(' ')}</td></tr>`,
    )
    .join('');
  const stateful = r.analysis.stateful;
  const window = r.analysis.window;
  const join = r.analysis.join;
  const kind = m.handler
    ? 'handler'
    : stateful.length
      ? 'stateful'
      : window
        ? 'windowed'
        : join
          ? 'stream join'
          : r.analysis.view
            ? 'materialised view'
            : r.analysis.dedup
              ? 'deduplicating'
              : 'stateless';
  const units = input.project.unitTests.filter((u) => u.expect.has(m.name)).map((u) => `unit test ${u.name} (${path.relative(input.project.dir, path.resolve(u.file))})`);
  const modelTests = [...testsOf(r, undefined), ...units];
  const fixture = input.fixtureRun?.fixtures.get(m.source);
  const rows = input.fixtureRun?.outputs.get(m.name)?.rows.length;
  const fixtureNote = fixture ? `<li>fixture <code>${esc(path.relative(input.project.dir, fixture))}</code> (run with <code>sluice test</code>): ${rows ?? 0} row${rows === 1 ? '' : 's'}</li>` : '';
  const testItems = modelTests.map((t) => `<li><span class="test">${esc(t)}</span></li>`).join('') + fixtureNote;
  return `<section class="model" id="${esc(anchor(id))}" data-name="${esc(m.name)}">
<h2><span class="badge model">${m.handler ? 'handler' : 'model'}</span> ${esc(m.name)} <span class="badge ${kind === 'stateless' || kind === 'stateful' || kind === 'handler' ? kind : 'windowed'}">${kind}</span></h2>
${m.description ? `<p class="description">${esc(m.description)}</p>` : '<p class="description none">No description: add one in config/models.yml (overrides.' + esc(m.name) + '.description) or with {{ config(description=...) }}.</p>'}
${stateful.length ? `<ul class="reasons">${stateful.map((s) => `<li>${esc(s)}</li>`).join('')}</ul>` : ''}
<table class="kv">
${window ? `<tr><th>window</th><td>${esc(windowSummary(window, m.window))}</td></tr>` : ''}
${join ? `<tr><th>join</th><td>${esc(joinSummary(join, m.window))}</td></tr>` : ''}
${m.handler ? `<tr><th>handler</th><td>${esc(stepKind(m, r.analysis))}</td></tr>` : ''}
${r.analysis.view || r.analysis.dedup ? `<tr><th>state</th><td>${esc(statefulness(r.analysis, m.window, m.stateTtl))}</td></tr>` : ''}
<tr><th>file</th><td><code>${esc(m.file)}</code></td></tr>
<tr><th>${m.feeds.length > 1 ? 'sources' : 'source'}</th><td>${links((m.feeds.length ? m.feeds : m.source ? [m.source] : []).map((s) => nodeId('source', s)))}</td></tr>
<tr><th>reads</th><td>${links(up)}</td></tr>
<tr><th>read by</th><td>${links(down)}</td></tr>
<tr><th>sinks</th><td>${links(m.sinks.map((s) => nodeId('sink', s)))}</td></tr>
<tr><th>flush</th><td>every ${esc(m.maxAgeSeconds)} s or ${esc(sizeText(m.maxFileBytes))}</td></tr>
${contract}</table>
<h3>Columns</h3>
${cols.length ? `<table class="columns"><thead><tr><th>column</th><th>type${typed ? '' : ' (no fixture)'}</th><th>description</th><th>tests</th></tr></thead><tbody>${colRows}</tbody></table>` : '<p class="none">Columns are known once the model runs on a fixture (tests/&lt;source&gt;.json).</p>'}
<h3>Tests</h3>
${testItems ? `<ul class="tests">${testItems}</ul>` : '<p class="none">No tests declared.</p>'}
<h3>${m.handler ? 'Code' : 'SQL'}</h3>
<pre class="sql"><code>${esc(maskText(m.sqlText.trim()))}</code></pre>
<details><summary>${m.handler ? 'what it reads' : 'compiled SQL'}</summary><pre class="sql"><code>${esc(maskText(m.rendered.sql.trim()))}</code></pre></details>
</section>`;
}

const CSS = `
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#0f172a;background:#f8fafc;display:flex;min-height:100vh}
nav{width:240px;flex:none;background:#0f172a;color:#e2e8f0;padding:16px;position:sticky;top:0;height:100vh;overflow:auto}
nav h1{font-size:18px;margin:0 0 4px}
nav .meta{font-size:12px;color:#94a3b8;margin-bottom:12px}
nav input{width:100%;padding:6px 8px;border-radius:6px;border:1px solid #334155;background:#1e293b;color:#e2e8f0}
nav h4{margin:16px 0 4px;font-size:11px;text-transform:uppercase;letter-spacing:.08em;color:#94a3b8}
nav ul{list-style:none;margin:0;padding:0}
nav li a{display:block;padding:2px 6px;border-radius:4px;color:#e2e8f0;text-decoration:none}
nav li a:hover{background:#1e293b}
main{flex:1;min-width:0;padding:24px 32px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:10px;padding:16px 20px;margin:0 0 20px}
h2{margin:0 0 8px;font-size:20px}
h3{margin:16px 0 6px;font-size:14px;text-transform:uppercase;letter-spacing:.05em;color:#475569}
.graph{overflow:auto}
svg .edge{fill:none;stroke:#94a3b8;stroke-width:1.6}
svg .edge.hl{stroke:#0f172a;stroke-width:2.4}
svg .node rect{stroke-width:1.5}
svg .node.source rect{fill:#e0f2fe;stroke:#0369a1}
svg .node.model rect{fill:#fef9c3;stroke:#a16207}
svg .node.reference rect{fill:#f3e8ff;stroke:#7e22ce}
svg .node.sink rect{fill:#dcfce7;stroke:#15803d}
svg .node text{text-anchor:middle;font-family:system-ui,sans-serif}
svg .node .kind{font-size:10px;fill:#475569}
svg .node .name{font-size:13px;font-weight:600;fill:#0f172a}
svg.focus .node{opacity:.3}
svg.focus .node.hl{opacity:1}
svg.focus .edge{opacity:.25}
svg.focus .edge.hl{opacity:1}
.badge{display:inline-block;font-size:11px;font-weight:600;padding:1px 8px;border-radius:999px;vertical-align:middle}
.badge.model{background:#fef9c3;color:#854d0e}.badge.reference{background:#f3e8ff;color:#6b21a8}.badge.source{background:#e0f2fe;color:#075985}.badge.sink{background:#dcfce7;color:#166534}
.badge.stateless{background:#f1f5f9;color:#334155}.badge.windowed{background:#e0f2fe;color:#075985}.badge.stateful{background:#fee2e2;color:#991b1b}
.declared{font-size:11px;color:#475569;border:1px solid #cbd5e1;border-radius:4px;padding:0 4px}
.description{margin:0 0 8px}
.none{color:#94a3b8}
table{border-collapse:collapse}
table.kv th{text-align:left;font-weight:500;color:#475569;padding:2px 16px 2px 0;vertical-align:top}
table.columns{width:100%}
table.columns th,table.columns td{border-bottom:1px solid #e2e8f0;padding:4px 8px;text-align:left}
table.columns thead th{background:#f1f5f9}
.test{display:inline-block;font-size:12px;background:#ede9fe;color:#5b21b6;border-radius:4px;padding:0 6px}
pre.sql{background:#0f172a;color:#e2e8f0;padding:12px;border-radius:8px;overflow:auto;font-size:12.5px}
ul.reasons{color:#991b1b;margin:4px 0}
.hidden{display:none}
`;

const JS = `
(function () {
  var input = document.getElementById('search');
  input.addEventListener('input', function () {
    var q = input.value.toLowerCase();
    document.querySelectorAll('[data-name]').forEach(function (el) {
      el.classList.toggle('hidden', q !== '' && el.getAttribute('data-name').toLowerCase().indexOf(q) < 0);
    });
  });
  var svg = document.getElementById('lineage');
  var edges = Array.prototype.slice.call(svg.querySelectorAll('.edge'));
  function walk(id, dir, seen) {
    edges.forEach(function (e) {
      var from = e.getAttribute('data-from'), to = e.getAttribute('data-to');
      var next = dir === 'up' ? (to === id ? from : null) : (from === id ? to : null);
      if (next !== null) { e.classList.add('hl'); if (!seen[next]) { seen[next] = true; walk(next, dir, seen); } }
    });
    return seen;
  }
  svg.querySelectorAll('.node').forEach(function (n) {
    n.addEventListener('mouseenter', function () {
      var id = n.getAttribute('data-id'), seen = {};
      seen[id] = true; walk(id, 'up', seen); walk(id, 'down', seen);
      svg.classList.add('focus');
      svg.querySelectorAll('.node').forEach(function (m) { m.classList.toggle('hl', !!seen[m.getAttribute('data-id')]); });
    });
    n.addEventListener('mouseleave', function () {
      svg.classList.remove('focus');
      svg.querySelectorAll('.hl').forEach(function (m) { m.classList.remove('hl'); });
    });
  });
})();
`;

/** Each windowed model's window in one line, for the lineage. */
function windowsOf(reports: ModelReport[]): Map<string, string> {
  return new Map(reports.filter((r) => r.analysis.window).map((r) => [r.model.name, windowSummary(r.analysis.window!, r.model.window)]));
}

/** Each stream join in one line, for the lineage. */
function joinsOf(reports: ModelReport[]): Map<string, string> {
  return new Map(reports.filter((r) => r.analysis.join).map((r) => [r.model.name, joinSummary(r.analysis.join!, r.model.window)]));
}

/** The tables (reference tables) each model names, for the lineage. */
function tablesOf(reports: ModelReport[]): Map<string, string[]> {
  return new Map(reports.filter((r) => r.analysis.tables?.length).map((r) => [r.model.name, r.analysis.tables!]));
}

/** A reference table's section: where it is read from, how often, and the models joining it. */
function referenceSection(r: Project['references'][number], g: Lineage): string {
  const id = nodeId('reference', r.name);
  const from = g.nodes.find((n) => n.id === id)?.type ?? '';
  const read = r.csv ?? r.parquet ?? r.json ?? r.table ?? r.query ?? '';
  return `<section class="reference" id="${esc(anchor(id))}" data-name="${esc(r.name)}">
<h2><span class="badge reference">reference</span> ${esc(r.name)} <small>(${esc(from)})</small></h2>
<table class="kv"><tr><th>declared in</th><td><code>${esc(r.file ?? 'config/models.yml')}</code></td></tr>
<tr><th>reads</th><td><code>${esc(read)}</code></td></tr>
<tr><th>refreshed</th><td>${esc(r.refresh_interval ? `every ${r.refresh_interval}` : 'at start only')}</td></tr>
<tr><th>max_rows</th><td>${r.max_rows}</td></tr>
<tr><th>joined by</th><td>${links(g.edges.filter((e) => e.from === id).map((e) => e.to))}</td></tr></table>
</section>`;
}

/** The whole site: one self-contained HTML page (inline CSS, JS and SVG; nothing fetched). */
export function renderSite(input: DocsInput): string {
  const { project, reports } = input;
  const g = buildLineage(project, windowsOf(reports), tablesOf(reports), joinsOf(reports));
  const connector = (kind: 'source' | 'sink', s: { name: string; type: string; file: string; cfg: Record<string, unknown> }) => {
    const id = nodeId(kind, s.name);
    const edges = kind === 'source' ? g.edges.filter((e) => e.from === id).map((e) => e.to) : g.edges.filter((e) => e.to === id).map((e) => e.from);
    const fixture = kind === 'source' ? input.fixtureRun?.fixtures.get(s.name) : undefined;
    return `<section class="${kind}" id="${esc(anchor(id))}" data-name="${esc(s.name)}">
<h2><span class="badge ${kind}">${kind}</span> ${esc(s.name)} <small>(${esc(s.type)})</small></h2>
<table class="kv"><tr><th>declared in</th><td><code>${esc(s.file)}</code></td></tr>
<tr><th>${kind === 'source' ? 'read by' : 'written by'}</th><td>${links(edges)}</td></tr>
${fixture ? `<tr><th>fixture</th><td><code>${esc(path.relative(project.dir, fixture))}</code></td></tr>` : ''}</table>
<h3>Settings</h3>${configTable(s.cfg)}
</section>`;
  };
  const navList = (kind: 'source' | 'reference' | 'model' | 'sink', names: string[]) =>
    `<h4>${kind}s</h4><ul>${names.map((n) => `<li data-name="${esc(n)}"><a href="#${esc(anchor(nodeId(kind, n)))}">${esc(n)}</a></li>`).join('')}</ul>`;
  const stamp = input.generatedAt.toISOString().replace('T', ' ').slice(0, 19) + ' UTC';
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(project.name)} · sluice docs</title>
<style>${CSS}</style>
</head>
<body>
<nav>
<h1>${esc(project.name)}</h1>
<div class="meta">${project.target ? `target <b>${esc(project.target)}</b> · ` : ''}${reports.length} models · generated ${esc(stamp)}</div>
<input id="search" type="search" placeholder="filter models…" aria-label="filter models">
${navList(
  'source',
  project.sources.map((s) => s.name),
)}
${
  project.references.length
    ? navList(
        'reference',
        project.references.map((r) => r.name),
      )
    : ''
}
${navList(
  'model',
  project.models.map((m) => m.name),
)}
${navList(
  'sink',
  project.sinks.map((s) => s.name),
)}
</nav>
<main>
<section id="overview">
<h2>Lineage</h2>
<p class="description">Sources feed models; models read each other with <code>ref()</code>; each model's rows go to its sinks. Hover a node to trace it, click to jump to it.</p>
<div class="graph">${lineageSvg(g)}</div>
</section>
${reports.map((r) => modelSection(input, g, r)).join('\n')}
${project.sources.map((s) => connector('source', s)).join('\n')}
${project.references.map((r) => referenceSection(r, g)).join('\n')}
${project.sinks.map((s) => connector('sink', s)).join('\n')}
</main>
<script>${JS}</script>
</body>
</html>
`;
}

/** Writes the site to `outDir` (index.html and lineage.json); returns the page's path. */
export async function writeSite(input: DocsInput, outDir: string): Promise<string> {
  await fsp.mkdir(outDir, { recursive: true });
  const page = path.join(outDir, 'index.html');
  const tmp = `${page}.tmp`;
  await fsp.writeFile(tmp, renderSite(input));
  await fsp.rename(tmp, page);
  await fsp.writeFile(path.join(outDir, 'lineage.json'), JSON.stringify(buildLineage(input.project, windowsOf(input.reports), tablesOf(input.reports), joinsOf(input.reports)), null, 2) + '\n');
  return page;
}

/** 134217728 -> "128 MiB"; sizes that are not a whole number of KiB or MiB stay in bytes. */
function sizeText(bytes: number): string {
  for (const [unit, n] of [
    ['GiB', 2 ** 30],
    ['MiB', 2 ** 20],
    ['KiB', 2 ** 10],
  ] as const) {
    if (bytes >= n && bytes % n === 0) return `${bytes / n} ${unit}`;
  }
  return `${bytes} bytes`;
}
