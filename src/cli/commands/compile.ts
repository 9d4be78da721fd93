import path from 'node:path';
import type { Command } from 'commander';
import { stepKind } from '../format.js';
import type { CliContext, CommonOpts } from './context.js';

/** `sluice compile`. */
export function registerCompile(program: Command, { withProject, loadAndCheck, out }: CliContext): void {
  withProject(program.command('compile').description('print the rendered SQL of every model, whether it is stateless or stateful (and why), its source, sinks and dependencies'))
    .option('--model <name>', 'only this model')
    .action(async (o: CommonOpts & { model?: string }) => {
      const { project, reports } = await loadAndCheck(o, { allowStateful: true });
      if (project.target) out(`-- target ${project.target}`);
      for (const { model, analysis } of reports) {
        if (o.model && model.name !== path.basename(o.model).replace(/\.(sql|[cm]?[jt]s)$/, '')) continue;
        const deps = model.refs.length ? `, after ${model.refs.join(', ')}` : '';
        out(
          `-- ${model.name} (${model.file}): ${stepKind(model, analysis)}, source${model.feeds.length > 1 ? 's' : ''} ${(model.feeds.length ? model.feeds : [model.source]).join(', ')}, sink ${model.sinks.join(', ')}${deps}`,
        );
        out(`${model.handler ? '-- the handler reads:\n' : ''}${model.rendered.sql.trim()}\n`);
      }
    });
}
