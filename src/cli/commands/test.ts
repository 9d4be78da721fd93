import path from 'node:path';
import { Option, type Command } from 'commander';
import { SluiceError } from '../../errors.js';
import { fixturesFor, modelsAndSources, runFixtures } from '../../engine/offline-runner.js';
import { fixtureDataTests, runUnitTests } from '../../engine/unit-tests.js';
import { formatTable } from '../format.js';
import { formatTestReport } from '../test-report.js';
import type { CliContext, CommonOpts } from './context.js';

/** `sluice test`. */
export function registerTest(program: Command, { withProject, loadAndCheck, out, err, setCode }: CliContext): void {
  withProject(
    program
      .command('test')
      .description(
        'run the models on fixture messages and print the rows, then the data tests (config/models.yml) on those rows and the unit tests (tests/*.yml); no connections; exit 1 when a message, a data test or a unit test fails',
      ),
  )
    .option('--fixture <file...>', 'JSON message, JSON array of messages, or NDJSON; SOURCE=FILE per source in a project with several (default: tests/<source>.json, or tests/sample.json)')
    .option('--model <name>', 'only this model (and what it refs)')
    .addOption(new Option('--format <format>', 'output format').choices(['table', 'json']).default('table'))
    .action(async (o: CommonOpts & { fixture?: string[]; model?: string; format: 'table' | 'json' }) => {
      const { project } = await loadAndCheck(o);
      const { models, sources } = modelsAndSources(project, o.model);
      const fixtures = fixturesFor(project, o.fixture ?? [], sources);
      const missing = sources.filter((s) => !fixtures.has(s));
      if (missing.length)
        throw new SluiceError(
          'USAGE',
          `no fixture for source${missing.length > 1 ? 's' : ''} ${missing.join(', ')}: pass --fixture ${missing.length > 1 || project.sources.length > 1 ? 'SOURCE=FILE' : 'FILE'} or add tests/${missing[0]}.json`,
        );
      const dataTests = fixtureDataTests(project, models);
      const run = await runFixtures(project, fixtures, models, dataTests.inspect);
      const shown = o.model ? models.filter((m) => m.name === path.basename(o.model!).replace(/\.sql$/, '')) : models;
      const result: Record<string, unknown> = {};
      for (const m of shown) {
        const r = run.outputs.get(m.name) ?? { columns: [], rows: [] };
        if (o.format === 'json') result[m.name] = r.rows;
        else out(`${m.name} (${r.rows.length} row${r.rows.length === 1 ? '' : 's'})\n${formatTable(r.columns, r.rows)}\n`);
      }
      const failures = run.failures;
      const units = await runUnitTests(project, o.model ? shown : undefined);
      const tests = dataTests.results.filter((r) => shown.some((m) => m.name === r.test.model));
      if (o.format === 'json') {
        const data_tests = tests.map((r) => ({
          test: r.test.name,
          model: r.test.model,
          column: r.test.column,
          kind: r.test.kind,
          on_failure: r.test.onFailure,
          passed: r.failing === 0,
          failing_rows: r.failing,
          examples: r.examples,
        }));
        const unit_tests = units.map((u) => ({ test: u.test.name, file: u.test.file, passed: u.ok, problems: u.problems }));
        out(JSON.stringify({ models: result, failures, data_tests, unit_tests }, null, 2));
      } else for (const f of failures) err(`FAILED ${JSON.stringify(f.message)} [${f.stage}${f.model ? ` in ${f.model}` : ''}]: ${f.error}`);
      if (o.format === 'table') {
        const report = formatTestReport(tests, units);
        if (report) out(report);
        out(`${run.messages} message(s), ${run.messages - failures.length} ok, ${failures.length} failed`);
      }
      if (failures.length || tests.some((r) => r.failing) || units.some((u) => !u.ok)) setCode(1);
    });
}
