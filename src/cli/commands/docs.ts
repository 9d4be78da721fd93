import path from 'node:path';
import type { Command } from 'commander';
import { SluiceError } from '../../errors.js';
import { fixturesFor, runFixtures } from '../../engine/offline-runner.js';
import { writeSite } from '../docs/site.js';
import { serveDocs } from '../docs/serve.js';
import type { CliContext, CommonOpts } from './context.js';

type DocsOpts = CommonOpts & { out?: string };

/** `sluice docs generate` and `sluice docs serve`. */
export function registerDocs(program: Command, ctx: CliContext): void {
  const { withProject, out } = ctx;
  const docs = program.command('docs').description('a static documentation site: lineage graph, models with SQL, columns and types, sources and sinks');
  withProject(docs.command('generate').description('write the site (one self-contained index.html, no network needed) and lineage.json'))
    .option('--out <dir>', 'output directory (default: <project>/.sluice/docs)')
    .action(async (o: DocsOpts) => {
      const page = await generate(o, ctx);
      out(`wrote ${path.relative(process.cwd(), page) || page}`);
    });
  withProject(docs.command('serve').description('generate the site and serve it over HTTP until stopped (Ctrl-C)'))
    .option('--out <dir>', 'output directory (default: <project>/.sluice/docs)')
    .option('--port <port>', 'port (0 = any free port)', '8080')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .action(async (o: DocsOpts & { port: string; host: string }) => {
      const port = Number(o.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new SluiceError('USAGE', `--port must be 0..65535, got ${o.port}`);
      const page = await generate(o, ctx);
      const { url } = await serveDocs(path.dirname(page), port, o.host);
      out(`serving docs at ${url} (Ctrl-C to stop)`);
      await new Promise(() => {});
    });
}

/** Writes the site (column types from the fixtures, where there are any); returns its index.html. */
async function generate(o: DocsOpts, { loadAndCheck, err }: CliContext): Promise<string> {
  const { project, reports } = await loadAndCheck(o, { allowStateful: true });
  const fixtures = fixturesFor(
    project,
    [],
    project.sources.map((s) => s.name),
  );
  const fixtureRun = fixtures.size ? await runFixtures(project, fixtures) : undefined;
  const dir = path.resolve(o.out ?? path.join(project.dir, '.sluice', 'docs'));
  const page = await writeSite({ project, reports, fixtureRun, generatedAt: new Date() }, dir);
  const noTypes = project.sources.filter((s) => !fixtures.has(s.name)).map((s) => s.name);
  if (noTypes.length) err(`note: no fixture for source ${noTypes.join(', ')} (tests/<source>.json): column types of its models are not shown`);
  return page;
}
