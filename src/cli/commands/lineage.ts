import { Option, type Command } from 'commander';
import { loadProject } from '../../project/project-loader.js';
import { renderLineage } from '../lineage.js';
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
      out(renderLineage(project, o));
    });
}
