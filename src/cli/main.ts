import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import v8 from 'node:v8';
import { Command, CommanderError, Option } from 'commander';
import { ConfigError, SluiceError, errorMessage, formatIssue } from '../errors.js';
import { loadProject, type Project, type ProjectOptions } from '../project/project-loader.js';
import { analyzeProject } from '../engine/validate.js';
import { readYaml } from '../project/yaml-file.js';
import { consumerConflicts } from '../project/consumer-conflicts.js';
import { Pipeline, defaultDlqDir, workerId, type RunSummary } from '../engine/pipeline.js';
import { defaultMemoryLimit, openDuckDB, shareDuckDB } from '../engine/duckdb.js';
import { needsHeap, runWithHeap } from './heap.js';
import { renderDryRun } from './dry-run.js';
import { runPipeline, runPipelines } from '../runtime/pipeline-group.js';
import type { DeadLetter, DeadLetterQueue } from '../connectors/types.js';
import { createLogger, silentLogger, type Logger } from '../ops/logger.js';
import { formatTable } from './format.js';
import { scaffold, scaffoldShowcase } from './init.js';
import { DLQ_FILE, readDeadLetters } from '../connectors/file/file-dlq.js';
import { DlqReplaySource } from '../connectors/file/dlq-replay-source.js';
import { onStopSignal, releaseStopSignals } from './stop-signals.js';
import { planCommands } from './plan.js';
import { maskConfig, maskText } from '../util/secrets.js';
import { renderLineage } from './lineage.js';
import { fixturesFor, modelsAndSources, runFixtures } from '../engine/offline-runner.js';
import { checkContracts } from './contract-check.js';
import { writeSite } from './docs/site.js';
import { serveDocs } from './docs/serve.js';
import { scopeRun, type ScopedRun } from './source-scope.js';
import { fixtureDataTests, runUnitTests } from '../engine/unit-tests.js';
import { formatTestReport } from './test-report.js';

interface CommonOpts {
  project?: string;
  config?: string;
  models?: string;
  target?: string;
}

// Everything a command prints goes through the secret masker (passwords, tokens, URL userinfo).
const out = (s: string) => process.stdout.write(maskText(s.endsWith('\n') ? s : s + '\n'));
const err = (s: string) => process.stderr.write(maskText(s.endsWith('\n') ? s : s + '\n'));

function projectOpts(o: CommonOpts): ProjectOptions {
  return { project: o.project, config: o.config, models: o.models, target: o.target };
}

function withProject(cmd: Command, targetFlag = true): Command {
  cmd
    .option('--project <dir>', 'project directory', '.')
    .option('--config <dir>', 'config directory (default: <project>/config)')
    .option('--models <dir>', 'models directory (default: <project>/models)');
  return targetFlag ? cmd.option('--target <name>', "target (environment) from sluice.yml's targets: (default: $SLUICE_TARGET, else sluice.yml's target:)") : cmd;
}

/**
 * What loadAndCheck() checks beyond the project itself: `consumers` (validate, run) refuses
 * sources that would share a consumer on their broker (see consumerConflicts).
 */
interface Checks {
  allowStateful?: boolean;
  consumers?: boolean;
}

/** Loads the project and runs the DuckDB checks; throws ConfigError with every problem. */
async function loadAndCheck(o: CommonOpts, check: Checks = {}): Promise<{ project: Project; reports: Awaited<ReturnType<typeof analyzeProject>>['reports'] }> {
  const { duckdb, ...checked } = await loadAndCheckKeep(o, check);
  duckdb.conn.closeSync();
  duckdb.instance.closeSync();
  return checked;
}

/** loadAndCheck(), keeping the DuckDB instance it checked with (opened with the project's settings) for the caller. */
async function loadAndCheckKeep(o: CommonOpts, check: Checks = {}): Promise<{ project: Project; reports: Awaited<ReturnType<typeof analyzeProject>>['reports']; duckdb: Awaited<ReturnType<typeof openDuckDB>> }> {
  const project = loadProject(projectOpts(o));
  const duckdb = await openProjectDuckDB(project);
  try {
    const { issues, reports } = await analyzeProject(project, duckdb.conn, check);
    if (check.consumers) issues.push(...consumerConflicts(project.sources));
    if (issues.length) throw new ConfigError(issues);
    return { project, reports, duckdb };
  } catch (err) {
    duckdb.conn.closeSync();
    duckdb.instance.closeSync();
    throw err;
  }
}

/**
 * DuckDB opened with the project's `duckdb:` settings. Settings DuckDB refuses (memory_limit:
 * lots) are a config error at their line of sluice.yml (DuckDB itself only says "Failed to set config").
 */
async function openProjectDuckDB(project: Project): Promise<Awaited<ReturnType<typeof openDuckDB>>> {
  try {
    return await openDuckDB(project.duckdb);
  } catch (e) {
    const settings = Object.entries(project.duckdb).filter(([, v]) => v !== undefined);
    if (settings.length === 0) throw e;
    const file = path.join(project.dir, 'sluice.yml');
    const rel = path.relative(process.cwd(), file);
    const y = readYaml(file, {}, [], rel && !rel.startsWith('..') ? rel : file);
    const targets = (y?.value as { targets?: Record<string, { duckdb?: unknown }> } | undefined)?.targets;
    const keyPath = project.target && targets?.[project.target]?.duckdb !== undefined ? ['targets', project.target, 'duckdb'] : ['duckdb'];
    throw new ConfigError([{
      file: y?.file ?? file,
      line: y?.lineOf(keyPath),
      key: keyPath.join('.'),
      message: `DuckDB refuses ${settings.map(([k, v]) => `${k}: ${v}`).join(', ')} (${errorMessage(e)}): memory_limit is a size such as 2GB or 512MiB, threads a number from 1`,
    }]);
  }
}

/** The DLQ of a broker source (its own queue), or undefined for file DLQs. */
async function openBrokerDlq(scope: ScopedRun, log = silentLogger()): Promise<{ dlq: DeadLetterQueue; name: string } | undefined> {
  const { project } = scope;
  const src = project.sources[0];
  if (!src || src.spec.dlq.kind !== 'broker' || !src.spec.createDlq) return undefined;
  const dlq = await src.spec.createDlq(src.cfg, { projectDir: project.dir, log, workerId: scope.scopedWorkerId ?? workerId() });
  if (!dlq) return undefined;
  return { dlq, name: String((dlq as { queue?: string }).queue ?? src.cfg.dlq ?? 'dlq') };
}

/** The file DLQ directory of a scoped project (its one source). */
function dlqDir(project: Project): string {
  const src = project.sources[0];
  const d = src?.cfg.dlq;
  return d ? path.resolve(project.dir, d) : defaultDlqDir(project);
}

/**
 * The sources a `dlq` command works on, each scoped as `sluice run` scopes it (its own DLQ):
 * the one named with --source, or every source of the project.
 */
function dlqScopes(project: Project, source: string | undefined): ScopedRun[] {
  return scopeRun(project, source === undefined ? undefined : [source], undefined);
}

export function buildProgram(setCode: (n: number) => void): Command {
  const program = new Command();
  // Set before adding commands: subcommands inherit these settings.
  program.exitOverride();
  program.configureOutput({ writeErr: (s) => process.stderr.write(s) });
  program
    .name('sluice')
    .description('dbt for event streams: SQL models over queues and logs, run in DuckDB, delivered to Parquet and databases')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)');

  program
    .command('init')
    .description('create a new project that validates and tests as generated')
    .argument('<name>', 'directory to create')
    .addOption(new Option('--template <template>', 'showcase: two sources, four models with source()/ref()/config(), two sinks, docs, fixtures, dev/prod targets; minimal: one file source, two models, one Parquet sink').choices(['showcase', 'minimal']).default('showcase'))
    .action(async (name: string, o: { template: 'showcase' | 'minimal' }) => {
      const dir = path.resolve(name);
      if (fs.existsSync(dir) && fs.readdirSync(dir).length > 0) throw new SluiceError('USAGE', `${name} already exists and is not empty`);
      if (o.template === 'minimal') {
        await scaffold(dir, path.basename(dir));
        out(`created ${name}/\n\nnext:\n  cd ${name}\n  sluice validate\n  sluice test --fixture tests/sample.json\n  sluice run`);
        return;
      }
      await scaffoldShowcase(dir, path.basename(dir));
      out(`created ${name}/\n\nnext:\n  cd ${name}\n  sluice validate\n  sluice test                 # runs the models on tests/<source>.json\n  sluice lineage\n  sluice docs generate        # then open .sluice/docs/index.html\n  sluice run                  # every source, each with the models it feeds\n  sluice run --source orders  # or only some: --source may be repeated`);
    });

  withProject(program.command('validate').description('check config and models without connecting to anything: unknown sources, models and sinks, cycles, unused sources, SQL errors and stateful SQL, schema contracts (declared types; on the fixtures, declared columns not produced and values that do not cast), each with file and line'))
    .option('--show-config', 'also print the resolved settings of every source and sink (secrets masked)')
    .action(async (o: CommonOpts & { showConfig?: boolean }) => {
      const { project, reports } = await loadAndCheck(o, { consumers: true });
      await checkContracts(project);
      const src = project.sources.map((s) => `${s.name} (${s.type})`).join(', ');
      const sinks = project.sinks.map((s) => `${s.name} (${s.type})`).join(', ');
      out(`ok: project ${project.name}${project.target ? ` (target ${project.target})` : ''}: ${reports.length} model(s) [${project.models.map((m) => m.name).join(', ')}], source ${src}, sink ${sinks}`);
      if (o.showConfig) {
        for (const s of project.sources) out(`source ${s.name}: ${JSON.stringify(maskConfig(s.cfg))}`);
        for (const s of project.sinks) out(`sink ${s.name}: ${JSON.stringify(maskConfig(s.cfg))}`);
      }
    });

  withProject(program.command('compile').description('print the rendered SQL of every model, whether it is stateless or stateful (and why), its source, sinks and dependencies'))
    .option('--model <name>', 'only this model')
    .action(async (o: CommonOpts & { model?: string }) => {
      const { project, reports } = await loadAndCheck(o, { allowStateful: true });
      if (project.target) out(`-- target ${project.target}`);
      for (const { model, analysis } of reports) {
        if (o.model && model.name !== path.basename(o.model).replace(/\.sql$/, '')) continue;
        const deps = model.refs.length ? `, after ${model.refs.join(', ')}` : '';
        out(`-- ${model.name} (${model.file}): ${statefulness(analysis.stateful)}, source ${model.source}, sink ${model.sinks.join(', ')}${deps}`);
        out(model.rendered.sql.trim() + '\n');
      }
    });

  withProject(program.command('test').description('run the models on fixture messages and print the rows, then the data tests (config/models.yml) on those rows and the unit tests (tests/*.yml); no connections; exit 1 when a message, a data test or a unit test fails'))
    .option('--fixture <file...>', 'JSON message, JSON array of messages, or NDJSON; SOURCE=FILE per source in a project with several (default: tests/<source>.json, or tests/sample.json)')
    .option('--model <name>', 'only this model (and what it refs)')
    .addOption(new Option('--format <format>', 'output format').choices(['table', 'json']).default('table'))
    .action(async (o: CommonOpts & { fixture?: string[]; model?: string; format: 'table' | 'json' }) => {
      const { project } = await loadAndCheck(o);
      const { models, sources } = modelsAndSources(project, o.model);
      const fixtures = fixturesFor(project, o.fixture ?? [], sources);
      const missing = sources.filter((s) => !fixtures.has(s));
      if (missing.length) throw new SluiceError('USAGE', `no fixture for source${missing.length > 1 ? 's' : ''} ${missing.join(', ')}: pass --fixture ${missing.length > 1 || project.sources.length > 1 ? 'SOURCE=FILE' : 'FILE'} or add tests/${missing[0]}.json`);
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
        const data_tests = tests.map((r) => ({ test: r.test.name, model: r.test.model, column: r.test.column, kind: r.test.kind, on_failure: r.test.onFailure, passed: r.failing === 0, failing_rows: r.failing, examples: r.examples }));
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

  withProject(program.command('run').description('run the pipeline: every source (each with the models it feeds) in this process'))
    .option('--model <name...>', 'run only these models (and the models they ref), and only the sources feeding them')
    .option('--dry-run', 'consume one batch (of each source), print the output, write and acknowledge nothing')
    .option('--log-json', 'JSON log lines (for production)')
    .addOption(new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR']).default('info'))
    .option('--port <port>', 'HTTP port for /healthz /readyz /metrics (0 = off; default from sluice.yml or 9400)')
    .option('--source <name...>', 'run only these sources and the models they feed (default: all; with several, each is a pipeline of its own, its WAL in <wal.path>/<source>, the same in one process or one process per source)')
    .action(async (o: CommonOpts & { model?: string[]; dryRun?: boolean; logJson?: boolean; logLevel: string; port?: string; source?: string[] }) => {
      const log = createLogger({ json: o.logJson, level: o.logLevel });
      // Signals first: a stop during startup still ends with a flush and exit 0.
      const ac = new AbortController();
      const stop = (sig: string) => {
        if (ac.signal.aborted) return;
        log.info({ signal: sig }, 'stopping: finishing the batch in flight, then flushing');
        ac.abort();
      };
      onStopSignal(stop);
      const port = o.port !== undefined ? Number(o.port) : undefined;
      if (port !== undefined && (!Number.isInteger(port) || port < 0 || port > 65535)) throw new SluiceError('USAGE', `--port must be 0..65535, got ${o.port}`);
      const checked = await loadAndCheckKeep(o, { consumers: true });
      const { duckdb } = checked;
      if (needsHeap(checked.project.nodeMaxHeapMb)) {
        duckdb.conn.closeSync();
        duckdb.instance.closeSync();
        log.debug({ max_heap_mb: checked.project.nodeMaxHeapMb }, 'starting again with the heap limit of sluice.yml (node.max_heap_mb)');
        setCode(await runWithHeap(checked.project.nodeMaxHeapMb));
        return;
      }
      log.debug({ heap_limit_mb: Math.round(v8.getHeapStatistics().heap_size_limit / 2 ** 20), duckdb_memory_limit: checked.project.duckdb.memory_limit ?? defaultMemoryLimit() }, 'memory limits');
      let runs: ScopedRun[];
      try {
        runs = scopeRun(checked.project, o.source, o.model);
        if (runs.length > 1) {
          // The pipelines of one process share the project's DuckDB threads and memory limit.
          const share = await shareDuckDB(checked.project.duckdb, runs.length, duckdb.conn);
          await duckdb.conn.run(`SET threads = ${share.threads}; SET memory_limit = '${share.memory_limit}'`);
          runs = runs.map((r) => ({ ...r, project: { ...r.project, duckdb: { threads: share.threads, memory_limit: share.memory_limit } } }));
          log.info({ sources: runs.length, threads: share.total.threads, memory_limit: share.total.memory_limit, each: { threads: share.threads, memory_limit: share.memory_limit } }, 'the sources share DuckDB\'s threads and memory limit');
        }
      } catch (e) {
        duckdb.conn.closeSync();
        duckdb.instance.closeSync();
        throw e;
      }
      const started = Date.now();
      const done = (summary: RunSummary, l: Logger) => {
        if (o.dryRun) return;
        const secs = (Date.now() - started) / 1000;
        l.info({ messages: summary.messages, dead_lettered: summary.deadLettered, redelivered: summary.redelivered, rows: summary.rows, flushes: summary.flushes, seconds: Number(secs.toFixed(2)) }, 'done');
      };
      const print = (s: string) => process.stdout.write(s);
      if (runs.length === 1) {
        const [r] = runs;
        const summary = await runPipeline({ project: r.project, log, models: r.models, scopedWorkerId: r.scopedWorkerId, dryRun: o.dryRun, signal: ac.signal, duckdb }, o.dryRun ? 0 : (port ?? r.project.port));
        if (o.dryRun) print(renderDryRun(summary.dryRun));
        done(summary, log);
        return;
      }
      // Each source's dry run is printed whole, under its name, as soon as it has its batch.
      await runPipelines({
        members: runs.map((r, i) => ({
          source: r.source,
          options: { project: r.project, models: r.models, scopedWorkerId: r.scopedWorkerId, dryRun: o.dryRun, duckdb: i === 0 ? duckdb : undefined },
        })),
        log,
        port: o.dryRun ? 0 : (port ?? checked.project.port),
        signal: ac.signal,
        onEnd: (source, summary, l) => {
          if (o.dryRun) print(`== source ${source} ==\n${renderDryRun(summary.dryRun)}\n`);
          done(summary, l);
        },
      });
    });

  const models = program.command('models').description('inspect models');
  withProject(models.command('list').description('list the models: source, sinks, dependencies, and stateless or stateful (with the reason)')).action(async (o: CommonOpts) => {
    const { reports } = await loadAndCheck(o, { allowStateful: true });
    const rows = reports.map(({ model, analysis }) => ({
      model: model.name,
      file: model.file,
      source: model.source,
      sink: model.sinks.join(', '),
      refs: model.refs.join(', '),
      kind: statefulness(analysis.stateful),
    }));
    out(formatTable([{ name: 'model' }, { name: 'file' }, { name: 'source' }, { name: 'sink' }, { name: 'refs' }, { name: 'kind' }], rows, 200));
  });

  withProject(program.command('lineage').description('show the graph sources -> models -> sinks'))
    .option('--model <name>', 'only what this model reads from and what reads it')
    .option('--upstream', 'with --model: only what it reads from')
    .option('--downstream', 'with --model: only what reads it, down to the sinks')
    .addOption(new Option('--format <format>', 'ascii tree, mermaid flowchart or JSON nodes and edges').choices(['ascii', 'mermaid', 'json']).default('ascii'))
    .action(async (o: CommonOpts & { model?: string; upstream?: boolean; downstream?: boolean; format: 'ascii' | 'mermaid' | 'json' }) => {
      const project = loadProject(projectOpts(o));
      out(renderLineage(project, o));
    });

  const docs = program.command('docs').description('a static documentation site: lineage graph, models with SQL, columns and types, sources and sinks');
  const generate = async (o: CommonOpts & { out?: string }): Promise<string> => {
    const { project, reports } = await loadAndCheck(o, { allowStateful: true });
    const fixtures = fixturesFor(project, [], project.sources.map((s) => s.name));
    const fixtureRun = fixtures.size ? await runFixtures(project, fixtures) : undefined;
    const dir = path.resolve(o.out ?? path.join(project.dir, '.sluice', 'docs'));
    const page = await writeSite({ project, reports, fixtureRun, generatedAt: new Date() }, dir);
    const noTypes = project.sources.filter((s) => !fixtures.has(s.name)).map((s) => s.name);
    if (noTypes.length) err(`note: no fixture for source ${noTypes.join(', ')} (tests/<source>.json): column types of its models are not shown`);
    return page;
  };
  withProject(docs.command('generate').description('write the site (one self-contained index.html, no network needed) and lineage.json'))
    .option('--out <dir>', 'output directory (default: <project>/.sluice/docs)')
    .action(async (o: CommonOpts & { out?: string }) => {
      const page = await generate(o);
      out(`wrote ${path.relative(process.cwd(), page) || page}`);
    });
  withProject(docs.command('serve').description('generate the site and serve it over HTTP until stopped (Ctrl-C)'))
    .option('--out <dir>', 'output directory (default: <project>/.sluice/docs)')
    .option('--port <port>', 'port (0 = any free port)', '8080')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .action(async (o: CommonOpts & { out?: string; port: string; host: string }) => {
      const port = Number(o.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new SluiceError('USAGE', `--port must be 0..65535, got ${o.port}`);
      const page = await generate(o);
      const { url } = await serveDocs(path.dirname(page), port, o.host);
      out(`serving docs at ${url} (Ctrl-C to stop)`);
      await new Promise(() => {});
    });

  const dlq = program.command('dlq').description('inspect and replay dead letters');
  withProject(dlq.command('inspect').description('show dead letters without consuming them (of every source, or the one named with --source)'))
    .option('--limit <n>', 'how many records (per source)', '10')
    .option('--source <name>', 'only the DLQ of this source')
    .addOption(new Option('--format <format>', 'output format').choices(['table', 'json']).default('table'))
    .action(async (o: CommonOpts & { limit: string; format: string; source?: string }) => {
      const project = loadProject(projectOpts(o));
      const limit = Number(o.limit);
      if (!Number.isInteger(limit) || limit < 0) throw new SluiceError('USAGE', `--limit must be a whole number, got ${o.limit}`);
      const scopes = dlqScopes(project, o.source);
      const many = project.sources.length > 1;
      const json: (DeadLetter & { source_name?: string })[] = [];
      for (const scope of scopes) {
        const brokerDlq = await openBrokerDlq(scope);
        let all: DeadLetter[];
        let where: string;
        if (brokerDlq) {
          try {
            all = await brokerDlq.dlq.inspect(limit);
          } finally {
            await brokerDlq.dlq.close();
          }
          where = `queue ${brokerDlq.name}`;
        } else {
          const file = path.join(dlqDir(scope.project), DLQ_FILE);
          all = await readDeadLetters(file);
          where = path.relative(process.cwd(), file) || file;
        }
        const recs = all.slice(0, limit);
        if (o.format === 'json') {
          json.push(...recs.map((r) => (many ? { source_name: scope.source, ...r } : r)));
          continue;
        }
        const of = many ? `source ${scope.source}: ` : '';
        out(`${of}${brokerDlq ? `${recs.length} dead letter(s) shown from` : `${all.length} dead letter(s) in`} ${where}${all.length > recs.length ? `, showing ${recs.length}` : ''}`);
        if (recs.length) {
          out(formatTable(
            [{ name: 'time' }, { name: 'stage' }, { name: 'source' }, { name: 'error' }, { name: 'payload' }],
            recs.map((r) => ({ time: r.time, stage: r.stage, source: JSON.stringify(r.source), error: r.error, payload: r.payload })),
            60,
          ));
        }
      }
      if (o.format === 'json') out(JSON.stringify(json, null, 2));
    });

  // Here --target names the queue to replay to (as it always has); the environment comes from $SLUICE_TARGET.
  withProject(dlq.command('replay').description('send dead letters back: to the source queue (brokers) or through the pipeline (files); failures land in the DLQ again (every source, or the one named with --source; environment: $SLUICE_TARGET)'), false)
    .option('--target <queue>', 'queue to move dead letters to (brokers; default: the queue they came from)')
    .option('--limit <n>', 'move at most this many (brokers)')
    .option('--source <name>', 'only the DLQ of this source')
    .option('--log-json', 'JSON log lines')
    .option('--log-level <level>', 'log level', 'info')
    .action(async (o: CommonOpts & { logJson?: boolean; logLevel: string; target?: string; limit?: string; source?: string }) => {
      const log = createLogger({ json: o.logJson, level: o.logLevel });
      const project = loadProject({ ...projectOpts(o), target: undefined });
      const limit = o.limit === undefined ? undefined : Number(o.limit);
      if (limit !== undefined && (!Number.isInteger(limit) || limit < 0)) throw new SluiceError('USAGE', `--limit must be a whole number, got ${o.limit}`);
      const scopes = dlqScopes(project, o.source);
      if (o.target && scopes.length > 1) throw new SluiceError('USAGE', `--target names one queue: choose the source whose dead letters go there with --source (sources: ${scopes.map((s) => s.source).join(', ')})`);
      const ac = new AbortController();
      onStopSignal(() => ac.abort());
      for (const scope of scopes) {
        const of = scopes.length > 1 ? `source ${scope.source}: ` : '';
        if (ac.signal.aborted) {
          out(`${of}not replayed: stopped`);
          setCode(1);
          return;
        }
        const brokerDlq = await openBrokerDlq(scope, log);
        if (brokerDlq?.dlq.replay) {
          try {
            const { moved } = await brokerDlq.dlq.replay({ target: o.target, limit });
            out(`${of}moved ${moved} dead letter(s) from ${brokerDlq.name} to ${o.target ?? 'their original queue'}`);
          } finally {
            await brokerDlq.dlq.close();
          }
          continue;
        }
        await brokerDlq?.dlq.close();
        if (o.target || o.limit) throw new SluiceError('USAGE', `${of}--target and --limit apply to broker DLQs; a file DLQ is replayed through the pipeline as a whole`);
        const done = await replayFileDlq(scope, log, ac.signal);
        if (done === 'interrupted') {
          setCode(1);
          return;
        }
        out(`${of}${done}`);
      }
    });

  /**
   * Replays a file DLQ through the source's pipeline: the current DLQ file is set aside under a
   * unique name first, so an interrupted replay resumes from it. Returns the summary line, or
   * 'interrupted' (after saying how to resume).
   */
  async function replayFileDlq(scope: ScopedRun, log: Logger, signal: AbortSignal): Promise<string> {
    const { project } = scope;
    const dir = dlqDir(project);
    const current = path.join(dir, DLQ_FILE);
    if (fs.existsSync(current) && fs.statSync(current).size > 0) {
      const stamp = new Date().toISOString().replace(/[-:.]/g, '').replace('T', 't').replace('Z', '');
      await fsp.rename(current, path.join(dir, `replay-${stamp}.ndjson`));
    }
    const files = await DlqReplaySource.pendingFiles(dir);
    if (files.length === 0) return 'the DLQ is empty; nothing to replay';
    let total = 0;
    let failed = 0;
    for (const file of files) {
      const src = new DlqReplaySource(file, project.sources[0].cfg.batch_size);
      const walDir = path.join(path.dirname(project.walPath), 'replay-wal', ...(scope.scopedWorkerId ? [scope.source] : []), path.basename(file, '.ndjson'));
      const summary = await new Pipeline({
        project, log, signal, walDir, scopedWorkerId: scope.scopedWorkerId,
        sourceOverride: { source: src, name: project.sources[0].name },
      }).run();
      if (signal.aborted) {
        out(`interrupted; run \`sluice dlq replay${scope.scopedWorkerId ? ` --source ${scope.source}` : ''}\` again to resume ${path.basename(file)}`);
        return 'interrupted';
      }
      total += summary.messages;
      failed += summary.deadLettered;
      await fsp.rm(walDir, { recursive: true, force: true });
      await fsp.rm(file, { force: true });
    }
    return `replayed ${total} dead letter(s): ${total - failed} delivered, ${failed} failed again (back in the DLQ)`;
  }

  planCommands<CommonOpts>(program, { withProject, load: loadAndCheck, out, setCode });

  return program;
}

/** "stateless", or "stateful: why". */
function statefulness(reasons: string[]): string {
  return reasons.length ? `stateful: ${reasons.join('; ')}` : 'stateless';
}

/** Config problems printed at most; the count says how many there are. */
const MAX_SHOWN_ISSUES = 200;

/** Runs the CLI; resolves to the process exit code (0 ok, 1 failure, 2 usage or config error). */
export async function main(argv: string[]): Promise<number> {
  let code = 0;
  const program = buildProgram((n) => {
    code = n;
  });
  const debug = argv.some((a) => /^(--log-level(=|$)|debug$|DEBUG$)/.test(a)) && argv.some((a) => /debug/i.test(a));
  // Only `run` and `dlq replay` stop gracefully; every other command ends on a signal at once.
  const [command, sub] = argv.slice(2).filter((a) => !a.startsWith('-'));
  if (!(command === 'run' || (command === 'dlq' && sub === 'replay'))) releaseStopSignals();
  try {
    await program.parseAsync(argv);
    return code;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return 0;
      return 2;
    }
    if (e instanceof ConfigError) {
      err(`error: invalid project (${e.issues.length} problem${e.issues.length === 1 ? '' : 's'}):`);
      // A generated or pasted file can hold thousands of problems: the first ones say what is wrong.
      for (const i of e.issues.slice(0, MAX_SHOWN_ISSUES)) err(`  ${formatIssue(i)}`);
      if (e.issues.length > MAX_SHOWN_ISSUES) err(`  ... and ${e.issues.length - MAX_SHOWN_ISSUES} more`);
      return 2;
    }
    if (e instanceof SluiceError) {
      err(`error: ${e.message}`);
      if (debug && e.stack) err(e.stack);
      return e.code === 'USAGE' || e.code === 'CONFIG' ? 2 : 1;
    }
    err(`error: ${errorMessage(e)}`);
    if (debug && e instanceof Error && e.stack) err(e.stack);
    return 1;
  }
}

