import fs from 'node:fs';
import path from 'node:path';
import { Option, type Command } from 'commander';
import { SluiceError } from '../../errors.js';
import { scaffold, scaffoldShowcase } from '../init.js';
import type { CliContext } from './context.js';

/** `sluice init`. */
export function registerInit(program: Command, { out }: CliContext): void {
  program
    .command('init')
    .description('create a new project that validates and tests as generated')
    .argument('<name>', 'directory to create')
    .addOption(
      new Option(
        '--template <template>',
        'showcase: two sources, four models with source()/ref()/config(), two sinks, docs, fixtures, dev/prod targets; minimal: one file source, two models, one Parquet sink',
      )
        .choices(['showcase', 'minimal'])
        .default('showcase'),
    )
    .action(async (name: string, o: { template: 'showcase' | 'minimal' }) => {
      const dir = path.resolve(name);
      if (fs.existsSync(dir) && fs.readdirSync(dir).length > 0) throw new SluiceError('USAGE', `${name} already exists and is not empty`);
      if (o.template === 'minimal') {
        await scaffold(dir, path.basename(dir));
        out(`created ${name}/\n\nnext:\n  cd ${name}\n  sluice validate\n  sluice test --fixture tests/sample.json\n  sluice run`);
        return;
      }
      await scaffoldShowcase(dir, path.basename(dir));
      out(
        `created ${name}/\n\nnext:\n  cd ${name}\n  sluice validate\n  sluice test                 # runs the models on tests/<source>.json\n  sluice lineage\n  sluice docs generate        # then open .sluice/docs/index.html\n  sluice run                  # every source, each with the models it feeds\n  sluice run --source orders  # or only some: --source may be repeated`,
      );
    });
}
