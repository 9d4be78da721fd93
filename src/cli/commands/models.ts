import type { Command } from 'commander';
import { formatTable, stepKind } from '../format.js';
import type { CliContext, CommonOpts } from './context.js';

/** `sluice models` and its subcommands. */
export function registerModels(program: Command, { withProject, loadAndCheck, out }: CliContext): void {
  const models = program.command('models').description('inspect models');
  withProject(models.command('list').description('list the models: source, sinks, dependencies, and stateless or stateful (with the reason)')).action(async (o: CommonOpts) => {
    const { reports } = await loadAndCheck(o, { allowStateful: true });
    const rows = reports.map(({ model, analysis }) => ({
      model: model.name,
      file: model.file,
      source: (model.feeds.length ? model.feeds : [model.source]).join(', '),
      sink: model.sinks.join(', '),
      refs: model.refs.join(', '),
      kind: stepKind(model, analysis),
    }));
    out(formatTable([{ name: 'model' }, { name: 'file' }, { name: 'source' }, { name: 'sink' }, { name: 'refs' }, { name: 'kind' }], rows, 200));
  });
}
