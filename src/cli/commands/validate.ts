import type { Command } from 'commander';
import { maskConfig } from '../../util/secrets.js';
import { checkContracts } from '../contract-check.js';
import type { CliContext, CommonOpts } from './context.js';

/** `sluice validate`. */
export function registerValidate(program: Command, { withProject, loadAndCheck, out }: CliContext): void {
  withProject(
    program
      .command('validate')
      .description(
        'check config and models without connecting to anything: unknown sources, models and sinks, cycles, unused sources, SQL errors and stateful SQL, schema contracts (declared types; on the fixtures, declared columns not produced and values that do not cast), each with file and line',
      ),
  )
    .option('--show-config', 'also print the resolved settings of every source and sink (secrets masked)')
    .action(async (o: CommonOpts & { showConfig?: boolean }) => {
      const { project, reports } = await loadAndCheck(o, { consumers: true });
      await checkContracts(project);
      const src = project.sources.map((s) => `${s.name} (${s.type})`).join(', ');
      const sinks = project.sinks.map((s) => `${s.name} (${s.type})`).join(', ');
      out(
        `ok: project ${project.name}${project.target ? ` (target ${project.target})` : ''}: ${reports.length} model(s) [${project.models.map((m) => m.name).join(', ')}], source ${src}, sink ${sinks}`,
      );
      if (o.showConfig) {
        for (const s of project.sources) out(`source ${s.name}: ${JSON.stringify(maskConfig(s.cfg))}`);
        for (const s of project.sinks) out(`sink ${s.name}: ${JSON.stringify(maskConfig(s.cfg))}`);
      }
    });
}
