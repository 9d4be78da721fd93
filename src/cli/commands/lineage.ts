import { Option, type Command } from 'commander';
import { loadProject } from '../../project/project-loader.js';
import { renderLineage } from '../lineage.js';
import { openDuckDB } from '../../engine/duckdb.js';
import { analyzeSql } from '../../sql/analyze.js';
import { joinSummary, windowSummary } from '../format.js';
import type { Project } from '../../project/project-loader.js';

/**
 * Each windowed model's window and each stream join in one line, and the tables each model names (reference tables);
 * models whose SQL does not parse are left out.
 */
export async function modelSummaries(project: Project): Promise<{ windows: Map<string, string>; tables: Map<string, string[]>; joins: Map<string, string> }> {
  const windows = new Map<string, string>();
  const joins = new Map<string, string>();
  const tables = new Map<string, string[]>();
  const { instance, conn } = await openDuckDB({ threads: 1 });
  try {
    for (const m of project.models) {
      const a = await analyzeSql(conn, m.rendered.sql);
      if (a.window) windows.set(m.name, windowSummary(a.window, m.window));
      if (a.join) joins.set(m.name, joinSummary(a.join, m.window));
      if (a.tables?.length) tables.set(m.name, a.tables);
    }
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
  return { windows, tables, joins };
}
import type { CliContext, CommonOpts } from './context.js';

/** `sluice lineage`. */
export function registerLineage(program: Command, { withProject, projectOpts, out }: CliContext): void {
  withProject(program.command('lineage').description('show the graph sources -> models -> sinks'))
    .option('--model <name>', 'only what this model reads from and what reads it')
    .option('--upstream', 'with --model: only what it reads from')
    .option('--downstream', 'with --model: only what reads it, down to the sinks')
    .addOption(new Option('--format <format>', 'ascii tree, mermaid flowchart or JSON nodes and edges').choices(['ascii', 'mermaid', 'json']).default('ascii'))
    .action(async (o: CommonOpts & { model?: string; upstream?: boolean; downstream?: boolean; format: 'ascii' | 'mermaid' | 'json' }) => {
      const project = loadProject(projectOpts(o));
      const { windows, tables, joins } = await modelSummaries(project);
      out(renderLineage(project, o, windows, tables, joins));
    });
}
