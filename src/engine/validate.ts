import type { DuckDBConnection } from '@duckdb/node-api';
import type { ConfigIssue } from '../errors.js';
import { analyzeSql, expressionColumns, reservedColumn, type SqlAnalysis } from '../sql/analyze.js';
import type { ModelDef, NamedSink, Project } from '../project/project-loader.js';
import { resolveContractTypes } from './contracts.js';
import { DEFAULT_WINDOW_SETTINGS, engineColumns, windowIntervals } from './windows.js';
import { SETTINGS_ONLY } from './joins.js';
import { lit } from '../sql/quote.js';
import { relationFeeds } from '../project/model-graph.js';

export interface ModelReport {
  model: ModelDef;
  analysis: SqlAnalysis;
}

/**
 * Checks what needs DuckDB: each model parses, is stateless (unless `allowStateful`: commands
 * that only describe models show why instead), its documented columns exist, and it has what
 * its sinks need.
 */
export async function analyzeProject(project: Project, conn: DuckDBConnection, opts: { allowStateful?: boolean } = {}): Promise<{ issues: ConfigIssue[]; reports: ModelReport[] }> {
  const issues: ConfigIssue[] = [];
  const reports: ModelReport[] = [];
  const dlqTests = new Set<unknown>();
  for (const m of project.models) {
    if (m.handler) {
      const r = await handlerReport(conn, m, project, reports);
      reports.push(r.report);
      issues.push(...r.issues);
      continue;
    }
    const analysis = await analyzeSql(conn, m.rendered.sql);
    reports.push({ model: m, analysis });
    issues.push(...(await resolveContractTypes(conn, m.name, m.contract)));
    if (analysis.error) {
      issues.push({ file: m.file, line: analysis.error.line, message: analysis.error.message });
      continue;
    }
    issues.push(...unknownTables(m, analysis.tables ?? [], project));
    if (analysis.outputColumns) {
      const reserved = analysis.outputColumns.find((c) => reservedColumn(c) !== undefined);
      if (reserved) issues.push({ file: m.file, message: `model ${m.name} has a column named ${reserved}, a name sluice keeps for its own use; rename it in the model's SELECT` });
      const have = new Set(analysis.outputColumns.map((c) => c.toLowerCase()));
      for (const c of m.columns) {
        if (!have.has(c.name.toLowerCase())) {
          issues.push({ file: c.file ?? m.file, line: c.line, message: `model ${m.name} has no column "${c.name}" to document (its columns: ${analysis.outputColumns.join(', ')})` });
        }
      }
    }
    if (analysis.stateful.length && !opts.allowStateful) {
      issues.push(
        analysis.windowed || analysis.joined || analysis.deduplicating || analysis.aggregating
          ? {
              file: m.file,
              message: `model ${m.name} ${analysis.joined ? 'joins two streams' : analysis.deduplicating ? 'deduplicates' : analysis.aggregating ? 'aggregates over the stream (a materialised view)' : 'groups by a window'}, but ${analysis.stateful.join('; ')}`,
            }
          : {
              file: m.file,
              message: `model ${m.name} is stateful: ${analysis.stateful.join('; ')}. Models run per message; an aggregation across messages needs a window: GROUP BY TUMBLE(ts, size), HOP(ts, slide, size), SESSION(ts, gap) or time_bucket(size, ts)`,
            },
      );
    }
    issues.push(...feedIssues(m, analysis, project));
    const at = { file: m.windowAt?.file ?? m.file, line: m.windowAt?.line, key: `overrides.${m.name}.window` };
    issues.push(...(await statefulIssues(conn, m, analysis, at, project, opts.allowStateful === true, dlqTests)));
    if (analysis.window) {
      const r = await windowIntervals(conn, analysis.window, m.window ?? DEFAULT_WINDOW_SETTINGS);
      if ('problem' in r) issues.push({ ...(m.window ? at : { file: m.file }), message: `model ${m.name}: ${r.problem}` });
      if (m.contract) {
        issues.push({
          file: m.contract.file ?? m.file,
          line: m.contract.line,
          message: `model ${m.name} is windowed: schema contracts (overrides.${m.name}.contract, typed columns) are not applied to windowed models yet; remove them, or check the columns in a stateless model that refs it`,
        });
      }
      if (project.windowState) issues.push(...windowStateIssues(m, analysis.window.keys, reports));
    } else if (m.window && !analysis.error && !analysis.join && !analysis.joined && !analysis.dedup && !analysis.deduplicating) {
      // (A materialised view takes no window settings either: reported here.)
      issues.push({ ...at, message: `model ${m.name} has no window (GROUP BY TUMBLE, HOP, SESSION or time_bucket): its window settings would do nothing` });
    }
    // The engine's columns (_revision, _retracted) are the model's too, for its sinks.
    const added = analysis.window ? engineColumns(analysis.window, m.window ?? DEFAULT_WINDOW_SETTINGS) : [];
    const output = analysis.outputColumns && [...analysis.outputColumns, ...added];
    for (const sinkName of m.sinks) {
      const sink = project.sinks.find((s) => s.name === sinkName);
      if (sink) issues.push(...(await missingColumns(conn, m, sink, output)));
    }
  }
  issues.push(...unpartitionedSources(project, reports));
  return { issues, reports };
}

/**
 * A handler: what it reads exists (the analysis of its input), and is a stateless model's rows,
 * a source's or `incoming` (a stateful model's rows come from many messages each, and a
 * handler's row is its message's). Its columns are its output schema's, when it has one.
 */
async function handlerReport(conn: DuckDBConnection, m: ModelDef, project: Project, reports: ModelReport[]): Promise<{ report: ModelReport; issues: ConfigIssue[] }> {
  const input = await analyzeSql(conn, m.rendered.sql);
  const analysis: SqlAnalysis = { ...input, outputColumns: m.handler!.outputColumns ?? null };
  const issues: ConfigIssue[] = [];
  if (input.error) issues.push({ file: m.file, message: `handler ${m.name} reads ${m.rendered.sql.replace('SELECT * FROM ', '')}: ${input.error.message}` });
  const from = m.handler!.from;
  const a = from.kind === 'ref' ? reports.find((r) => r.model.name === from.name)?.analysis : undefined;
  if (from.kind === 'ref' && a && (a.window || a.join || a.dedup || a.view || a.stateful.length)) {
    issues.push({
      file: m.file,
      message: `handler ${m.name} reads ${from.name}, a stateful model: a handler reads incoming, a source, or a stateless model (each row from one message); put it before the stateful model instead`,
    });
  }
  if (m.feeds.length > 1) issues.push({ file: m.file, message: `handler ${m.name} reads from several sources (${m.feeds.join(', ')}): a handler reads one source's rows` });
  for (const sinkName of m.sinks) {
    const sink = project.sinks.find((s) => s.name === sinkName);
    if (sink && analysis.outputColumns) issues.push(...(await missingColumns(conn, m, sink, analysis.outputColumns)));
  }
  return { report: { model: m, analysis }, issues };
}

/**
 * A model fed by two sources: a stream join whose sides each read one of them (their sources
 * then run as one pipeline), or a model reading one relation downstream of such a join. Any
 * other combination of two sources' batches would run per batch, and a batch holds the
 * messages of one source.
 */
function feedIssues(m: ModelDef, analysis: SqlAnalysis, project: Project): ConfigIssue[] {
  if (m.feeds.length < 2) return [];
  const of = `(${m.feeds.join(', ')})`;
  if (analysis.join) {
    const sides = [analysis.join.left, analysis.join.right].map((s) => ({ alias: s.alias, feeds: relationFeeds(s.reads, (x) => project.models.find((y) => y.name === x)?.feeds ?? []) }));
    const bad = sides.find((s) => s.feeds.length !== 1);
    if (bad) {
      return [
        {
          file: m.file,
          message: `model ${m.name} joins two sources' streams ${of}, but its side ${bad.alias} reads ${bad.feeds.length ? `several (${bad.feeds.join(', ')})` : 'none of them'}: each side of a stream join of two sources reads one source (docs/joins.md)`,
        },
      ];
    }
    if (sides[0].feeds[0] === sides[1].feeds[0]) return [];
    if (project.windowState) return [{ file: m.file, message: `model ${m.name} joins two sources ${of}: window_state does not support a pipeline of two sources yet; run it without window_state` }];
    return [];
  }
  if (m.refs.length === 1 && m.rendered.sources.length === 0 && !m.rendered.usesIncoming) return [];
  return [
    {
      file: m.file,
      message: `model ${m.name} reads from several sources ${of}: a batch holds the messages of one source, so only a stream join (a JOIN whose ON bounds one side's time by the other's, docs/joins.md) combines two sources' streams; a model downstream of it reads it alone`,
    },
  ];
}

/**
 * Data tests with on_failure: dlq beside a stateful model of the same source (each test once in
 * `done`): a window's row comes from many messages (a join's from two), so there is no one
 * message to dead-letter for it; and a message a test dead-letters after the models ran would
 * stay in the model's state.
 */
function dlqTestIssues(m: ModelDef, what: 'windowed model' | 'stream join' | 'deduplicating model' | 'materialised view', project: Project, done: Set<unknown>): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  for (const other of project.models.filter((x) => (x.feeds.length && m.feeds.length ? x.feeds.some((f) => m.feeds.includes(f)) : x.source === m.source))) {
    for (const t of other.dataTests.filter((x) => x.onFailure === 'dlq')) {
      if (done.has(t)) continue;
      done.add(t);
      issues.push({
        file: t.file ?? other.file,
        line: t.line,
        message:
          other === m
            ? `data test ${t.name} of ${what} ${m.name}: ${what === 'deduplicating model' ? 'on_failure: dlq would leave the message in its state (a later copy would be dropped as a duplicate)' : `on_failure: dlq needs a row's message, and a ${what === 'windowed model' ? "window's row has many" : what === 'materialised view' ? "group's row has many" : "join's row has two"}`}; use warn or fail`
            : `data test ${t.name} of model ${other.name}: on_failure: dlq is not supported yet beside a ${what} of the same source (${m.name}): the message would stay in its state; use warn or fail`,
      });
    }
  }
  return issues;
}

/**
 * What the kinds of stateful model need of their settings and neighbours (a window's late
 * policy, a join's, a deduplication's ttl, a view's sinks), and settings on a model that is not
 * of their kind. `describing`: a command that only describes models (the view's sink and its
 * neighbours' tests are not its concern).
 */
async function statefulIssues(
  conn: DuckDBConnection,
  m: ModelDef,
  analysis: SqlAnalysis,
  at: Omit<ConfigIssue, 'message'>,
  project: Project,
  describing: boolean,
  dlqTests: Set<unknown>,
): Promise<ConfigIssue[]> {
  const issues: ConfigIssue[] = [];
  if (analysis.window && m.window?.late === 'reopen') issues.push({ ...at, message: `model ${m.name}: late: reopen is for stream joins; a window takes drop, dlq or update` });
  if (analysis.join) issues.push(...(await joinIssues(conn, m, at, project)));
  if (analysis.dedup) issues.push(...(await dedupIssues(conn, m, at, project)));
  if (analysis.view && !describing) issues.push(...viewIssues(m, project));
  if (m.stateTtl && !analysis.view && !analysis.aggregating && !analysis.error) {
    issues.push({
      file: m.stateTtlAt?.file ?? m.file,
      line: m.stateTtlAt?.line,
      key: `overrides.${m.name}.state_ttl`,
      message: `model ${m.name}: state_ttl is for materialised views (GROUP BY without a window)`,
    });
  }
  if (m.window?.ttl && !analysis.dedup && !analysis.deduplicating && !analysis.error) {
    issues.push({ ...at, message: `model ${m.name}: ttl is for deduplicating models (QUALIFY row_number() OVER (PARTITION BY key ORDER BY time) = 1, or DISTINCT ON)` });
  }
  if (analysis.window || analysis.join || analysis.dedup || (analysis.view && !describing)) {
    const what = analysis.window ? 'windowed model' : analysis.join ? 'stream join' : analysis.view ? 'materialised view' : 'deduplicating model';
    issues.push(...dlqTestIssues(m, what, project, dlqTests));
  }
  return issues;
}

/**
 * A materialised view writes one current row per changed group at each batch: only a sink that
 * upserts keeps one row per group. Its state stays in the worker (no window_state) and it takes
 * no schema contract yet.
 */
function viewIssues(m: ModelDef, project: Project): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  for (const name of m.sinks) {
    const sink = project.sinks.find((s) => s.name === name);
    if (!sink || sink.spec.upsertKey?.(sink.cfg)) continue;
    issues.push({
      file: m.file,
      message: `model ${m.name} aggregates without a window (a materialised view: each batch writes the current row of every group it changed), but sink ${sink.name} (${sink.type}) appends, and would keep every version of a group's row. Write it to a sink that upserts by the group keys (postgres or mysql with strategy: merge, redis with mode: set, kafka with a key), or group by a window: GROUP BY TUMBLE(ts, INTERVAL '1' HOUR), ...`,
    });
  }
  if (project.windowState)
    issues.push({
      file: m.file,
      message: `model ${m.name} is a materialised view: its state stays in the worker's WAL directory; window_state is not supported for it yet: run one worker, without window_state`,
    });
  if (m.contract)
    issues.push({
      file: m.contract.file ?? m.file,
      line: m.contract.line,
      message: `model ${m.name} is a materialised view: schema contracts are not applied to it yet; check the columns in a stateless model that refs it`,
    });
  return issues;
}

/** What a deduplicating model needs (a ttl) and cannot take (late: update or reopen, a state store, a contract). */
async function dedupIssues(conn: DuckDBConnection, m: ModelDef, at: Omit<ConfigIssue, 'message'>, project: Project): Promise<ConfigIssue[]> {
  const issues: ConfigIssue[] = [];
  const s = m.window ?? DEFAULT_WINDOW_SETTINGS;
  const key = `overrides.${m.name}.window.ttl`;
  if (!s.ttl) {
    issues.push({
      file: m.windowAt?.file ?? m.file,
      line: m.windowAt?.line,
      key,
      message: `model ${m.name} deduplicates: set ${key} (how long a key is remembered past its latest row, e.g. 1 hour): its state is bounded by it`,
    });
  } else {
    try {
      const r = await conn.runAndReadAll(`SELECT epoch_us(x), datepart('month', x) + 12 * datepart('year', x) FROM (SELECT CAST(INTERVAL ${lit(s.ttl)} AS INTERVAL) AS x)`);
      const [us, months] = r.getRows()[0].map(Number);
      if (us <= 0 || months !== 0) issues.push({ ...at, key, message: `model ${m.name}: ttl ${s.ttl} must be positive and of fixed length (days or less)` });
    } catch {
      issues.push({ ...at, key, message: `model ${m.name}: ttl ${s.ttl} is not a duration` });
    }
  }
  if (s.late === 'update' || s.late === 'reopen') issues.push({ ...at, message: `model ${m.name} deduplicates: late: ${s.late} is not for it; a deduplicating model takes drop or dlq` });
  if (s.maxSessionDuration || s.maxGroupsPerWindow) issues.push({ ...at, message: `model ${m.name} deduplicates: max_session_duration and max_groups_per_window are for windows` });
  const r = await windowIntervals(conn, SETTINGS_ONLY, s);
  if ('problem' in r) issues.push({ ...at, message: `model ${m.name}: ${r.problem}` });
  if (project.windowState)
    issues.push({
      file: m.file,
      message: `model ${m.name} deduplicates: its state stays in the worker's WAL directory; window_state is not supported for it yet: run one worker, without window_state`,
    });
  if (m.contract)
    issues.push({
      file: m.contract.file ?? m.file,
      line: m.contract.line,
      message: `model ${m.name} deduplicates: schema contracts are not applied to it yet; check the columns in a stateless model that refs it`,
    });
  return issues;
}

/** What a stream join cannot take: its settings, a state store, a contract. */
async function joinIssues(conn: DuckDBConnection, m: ModelDef, at: Omit<ConfigIssue, 'message'>, project: Project): Promise<ConfigIssue[]> {
  const issues: ConfigIssue[] = [];
  const s = m.window ?? DEFAULT_WINDOW_SETTINGS;
  if (s.late === 'update') issues.push({ ...at, message: `model ${m.name} joins two streams: late: update is for windows; a stream join takes drop, dlq or reopen` });
  if (s.maxSessionDuration || s.maxGroupsPerWindow) issues.push({ ...at, message: `model ${m.name} joins two streams: max_session_duration and max_groups_per_window are for windows` });
  const r = await windowIntervals(conn, SETTINGS_ONLY, s);
  if ('problem' in r) issues.push({ ...at, message: `model ${m.name}: ${r.problem}` });
  if (project.windowState) {
    issues.push({
      file: m.file,
      message: `model ${m.name} joins two streams: its state stays in the worker's WAL directory; window_state (state moving between workers) is not supported for joins yet: run one worker, without window_state`,
    });
  }
  if (m.contract) {
    issues.push({
      file: m.contract.file ?? m.file,
      line: m.contract.line,
      message: `model ${m.name} joins two streams: schema contracts are not applied to stream joins yet; check the columns in a stateless model that refs it`,
    });
  }
  return issues;
}

/** The tables a model names that are not reference tables (a typo, or a reference not declared). */
function unknownTables(m: ModelDef, tables: string[], project: Project): ConfigIssue[] {
  const declared = new Set(project.references.map((r) => r.name.toLowerCase()));
  return tables
    .filter((t) => !declared.has(t))
    .map((t) => ({
      file: m.file,
      message: `model ${m.name} reads table "${t}", which is not a reference table: declare it under references: in config/models.yml (declared: ${project.references.map((r) => r.name).join(', ') || 'none'}), or read a source with {{ source(...) }} or a model with {{ ref(...) }}`,
    }));
}

/**
 * sluice.yml window_state (several workers, each partition's window state moving with it): the
 * workers give what one worker gives when every group's events are in one partition. Checked
 * where it can be: the source is read in partitions; the model groups by something besides the
 * window (a window over every key has events in every partition); its input carries partitions
 * (not another windowed model's rows). That the producer partitions by the group key cannot be
 * checked here (docs/windows.md, several workers).
 */
function windowStateIssues(m: ModelDef, keys: string[], reports: ModelReport[]): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const windowedRef = m.refs.find((r) => reports.some((x) => x.model.name === r && x.analysis.window));
  if (keys.length === 0) {
    issues.push({
      file: m.file,
      message: `model ${m.name} groups by the window alone: with window_state each worker would emit its own partial windows. Group by the key the producer partitions by as well (or run one worker, without window_state)`,
    });
  }
  if (windowedRef)
    issues.push({ file: m.file, message: `model ${m.name} reads windowed model ${windowedRef}: with window_state a windowed model cannot read another one yet (its rows have no source partition)` });
  return issues;
}

/** window_state over a source that is not read in partitions (with a windowed model): see windowStateIssues. */
function unpartitionedSources(project: Project, reports: ModelReport[]): ConfigIssue[] {
  const ws = project.windowState;
  const unpartitioned = project.sources.find((s) => !s.spec.partitioned);
  if (!ws || !unpartitioned || !reports.some((r) => r.analysis.window)) return [];
  return [
    {
      ...ws.at,
      key: 'window_state',
      message: `window_state moves a partition's window state between the workers of a consumer group; source ${unpartitioned.name} (${unpartitioned.type}) is not read in partitions: remove window_state and run one worker`,
    },
  ];
}

/** What a sink asks of a model's columns (partition keys, key columns, expressions) that the model lacks. */
async function missingColumns(conn: DuckDBConnection, m: ModelDef, sink: NamedSink, outputColumns: string[] | null): Promise<ConfigIssue[]> {
  const issues: ConfigIssue[] = [];
  const required = sink.spec.requiredColumns?.(sink.cfg) ?? [];
  const have = new Set((outputColumns ?? []).map((c) => c.toLowerCase()));
  const prefix = sink.name === 'default' ? ['sink'] : ['sinks', sink.name];
  for (const r of required) {
    // A bare column name: its key is the config key that holds it.
    const req =
      typeof r === 'string'
        ? {
            key: Object.keys(sink.cfg)
              .filter((k) => k !== 'type' && [sink.cfg[k]].flat().includes(r))
              .slice(0, 1),
            column: r,
          }
        : r;
    const at = { file: sink.file, line: sink.lineOf?.(req.key) ?? sink.line, key: [...prefix, ...req.key].join('.') };
    let columns = req.column ? [req.column] : [];
    if (req.expr) {
      const e = await expressionColumns(conn, req.expr);
      if ('error' in e) {
        issues.push({ ...at, message: e.error });
        continue;
      }
      columns = e.columns;
    }
    if (outputColumns === null) continue;
    for (const col of columns) {
      if (!have.has(col.toLowerCase())) {
        issues.push({ ...at, message: `model ${m.name} (${m.file}) has no column "${col}" (its columns: ${outputColumns.join(', ')})` });
      }
    }
  }
  return issues;
}
