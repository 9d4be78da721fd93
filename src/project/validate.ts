import type { DuckDBConnection } from '@duckdb/node-api';
import type { ConfigIssue } from '../errors.js';
import { analyzeSql, type SqlAnalysis } from '../sql/analyze.js';
import type { ModelDef, Project } from './project-loader.js';

export interface ModelReport {
  model: ModelDef;
  analysis: SqlAnalysis;
}

/** Checks what needs DuckDB: each model parses, is stateless, and has what its sinks need. */
export async function analyzeProject(project: Project, conn: DuckDBConnection): Promise<{ issues: ConfigIssue[]; reports: ModelReport[] }> {
  const issues: ConfigIssue[] = [];
  const reports: ModelReport[] = [];
  for (const m of project.models) {
    const analysis = await analyzeSql(conn, m.rendered.sql);
    reports.push({ model: m, analysis });
    if (analysis.error) {
      issues.push({ file: m.file, line: analysis.error.line, message: analysis.error.message });
      continue;
    }
    if (analysis.stateful.length) {
      issues.push({
        file: m.file,
        message: `model ${m.name} is stateful: ${analysis.stateful.join('; ')}. Models run per message; aggregations across messages need windows, which are not supported yet`,
      });
    }
    for (const sinkName of m.sinks) {
      const sink = project.sinks.find((s) => s.name === sinkName);
      const required = sink?.spec.requiredColumns?.(sink.cfg) ?? [];
      if (required.length === 0 || analysis.outputColumns === null) continue;
      const have = new Set(analysis.outputColumns.map((c) => c.toLowerCase()));
      for (const col of required) {
        if (!have.has(col.toLowerCase())) {
          issues.push({
            file: sink!.file,
            line: sink!.line,
            key: `${sinkName === 'default' ? 'sink' : `sinks.${sinkName}`}.${((sink!.cfg.partition_by as string[] | undefined) ?? []).includes(col) ? 'partition_by' : 'dedupe_key'}`,
            message: `model ${m.name} (${m.file}) has no column "${col}" (its columns: ${analysis.outputColumns.join(', ')})`,
          });
        }
      }
    }
  }
  return { issues, reports };
}
