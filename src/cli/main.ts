import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import { ConfigError, SluiceError, errorMessage, formatIssue } from '../errors.js';
import { loadProject, type Project, type ProjectOptions } from '../project/project-loader.js';
import { analyzeProject } from '../project/validate.js';
import { BatchExecutor, compileModels } from '../engine/executor.js';
import { Pipeline, defaultDlqDir, openDuckDB, selectModels, workerId } from '../engine/pipeline.js';
import type { DeadLetter, DeadLetterQueue } from '../connectors/types.js';
import { createLogger, silentLogger } from '../ops/logger.js';
import { readFixture } from './fixtures.js';
import { formatTable } from './format.js';
import { scaffold } from './init.js';
import { DLQ_FILE, readDeadLetters } from '../connectors/file/file-dlq.js';
import { DlqReplaySource } from '../connectors/file/dlq-replay-source.js';
import { onStopSignal, releaseStopSignals } from './stop-signals.js';

interface CommonOpts {
  project?: string;
  config?: string;
  models?: string;
}

const out = (s: string) => process.stdout.write(s.endsWith('\n') ? s : s + '\n');
const err = (s: string) => process.stderr.write(s.endsWith('\n') ? s : s + '\n');

function projectOpts(o: CommonOpts): ProjectOptions {
  return { project: o.project, config: o.config, models: o.models };
}

function withProject(cmd: Command): Command {
  return cmd
    .option('--project <dir>', 'project directory', '.')
    .option('--config <dir>', 'config directory (default: <project>/config)')
    .option('--models <dir>', 'models directory (default: <project>/models)');
}

/** Loads the project and runs the DuckDB checks; throws ConfigError with every problem. */
async function loadAndCheck(o: CommonOpts): Promise<{ project: Project; reports: Awaited<ReturnType<typeof analyzeProject>>['reports'] }> {
  const { duckdb, ...checked } = await loadAndCheckKeep(o);
  duckdb.conn.closeSync();
  duckdb.instance.closeSync();
  return checked;
}

/** loadAndCheck(), keeping the DuckDB instance it checked with (opened with the project's settings) for the caller. */
async function loadAndCheckKeep(o: CommonOpts): Promise<{ project: Project; reports: Awaited<ReturnType<typeof analyzeProject>>['reports']; duckdb: Awaited<ReturnType<typeof openDuckDB>> }> {
  const project = loadProject(projectOpts(o));
  const duckdb = await openDuckDB(project.duckdb);
  try {
    const { issues, reports } = await analyzeProject(project, duckdb.conn);
    if (issues.length) throw new ConfigError(issues);
    return { project, reports, duckdb };
  } catch (err) {
    duckdb.conn.closeSync();
    duckdb.instance.closeSync();
    throw err;
  }
}

/** The DLQ of a broker source (its own queue), or undefined for file DLQs. */
async function openBrokerDlq(project: Project, log = silentLogger()): Promise<{ dlq: DeadLetterQueue; name: string } | undefined> {
  const src = project.sources[0];
  if (!src || src.type === 'file' || src.type === 'generator' || !src.spec.createDlq) return undefined;
  const dlq = await src.spec.createDlq(src.cfg, { projectDir: project.dir, log, workerId: workerId() });
  if (!dlq) return undefined;
  return { dlq, name: String((dlq as { queue?: string }).queue ?? src.cfg.dlq ?? 'dlq') };
}

function dlqDir(project: Project): string {
  const src = project.sources[0];
  const d = src?.cfg.dlq;
  return d ? path.resolve(project.dir, d) : defaultDlqDir(project);
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
    .action(async (name: string) => {
      const dir = path.resolve(name);
      if (fs.existsSync(dir) && fs.readdirSync(dir).length > 0) throw new SluiceError('USAGE', `${name} already exists and is not empty`);
      await scaffold(dir, path.basename(dir));
      out(`created ${name}/\n\nnext:\n  cd ${name}\n  sluice validate\n  sluice test --fixture tests/sample.json\n  sluice run`);
    });

  withProject(program.command('validate').description('check config and models without connecting to anything')).action(async (o: CommonOpts) => {
    const { project, reports } = await loadAndCheck(o);
    const src = project.sources.map((s) => `${s.name} (${s.type})`).join(', ');
    const sinks = project.sinks.map((s) => `${s.name} (${s.type})`).join(', ');
    out(`ok: project ${project.name}: ${reports.length} model(s) [${project.models.map((m) => m.name).join(', ')}], source ${src}, sink ${sinks}`);
  });

  withProject(program.command('compile').description('print the rendered SQL of every model'))
    .option('--model <name>', 'only this model')
    .action(async (o: CommonOpts & { model?: string }) => {
      const { reports } = await loadAndCheck(o);
      for (const { model, analysis } of reports) {
        if (o.model && model.name !== path.basename(o.model).replace(/\.sql$/, '')) continue;
        const deps = model.refs.length ? `, after ${model.refs.join(', ')}` : '';
        out(`-- ${model.name} (${model.file}): ${analysis.stateful.length ? 'stateful' : 'stateless'}, source ${model.source}, sink ${model.sinks.join(', ')}${deps}`);
        out(model.rendered.sql.trim() + '\n');
      }
    });

  withProject(program.command('test').description('run the models on a fixture file and print the rows (no connections)'))
    .requiredOption('--fixture <file>', 'JSON message, JSON array of messages, or NDJSON')
    .option('--model <name>', 'only this model (and what it refs)')
    .addOption(new Option('--format <format>', 'output format').choices(['table', 'json']).default('table'))
    .action(async (o: CommonOpts & { fixture: string; model?: string; format: 'table' | 'json' }) => {
      const { project } = await loadAndCheck(o);
      if (!fs.existsSync(o.fixture)) throw new SluiceError('USAGE', `fixture ${o.fixture} does not exist`);
      const messages = readFixture(o.fixture);
      const models = selectModels(project, o.model ? [o.model] : undefined);
      const { conn, instance } = await openDuckDB();
      try {
        const compiled = await compileModels(conn, models);
        const ex = new BatchExecutor(conn, compiled, models[0]?.source || project.sources[0].name);
        await ex.init();
        const outcome = await ex.process(messages);
        const shown = o.model ? models.filter((m) => m.name === path.basename(o.model!).replace(/\.sql$/, '')) : models;
        const result: Record<string, unknown> = {};
        for (const m of shown) {
          const r = await ex.readOutput(m.name);
          if (o.format === 'json') result[m.name] = r.rows;
          else out(`${m.name} (${r.rows.length} row${r.rows.length === 1 ? '' : 's'})\n${formatTable(r.columns, r.rows)}\n`);
        }
        const failures = outcome.failures.map((f) => ({ message: messages[f.index].coords, stage: f.stage, model: f.model, error: f.error }));
        if (o.format === 'json') out(JSON.stringify({ models: result, failures }, null, 2));
        else for (const f of failures) err(`FAILED ${JSON.stringify(f.message)} [${f.stage}${f.model ? ` in ${f.model}` : ''}]: ${f.error}`);
        if (o.format === 'table') out(`${messages.length} message(s), ${messages.length - failures.length} ok, ${failures.length} failed`);
        if (failures.length) setCode(1);
      } finally {
        conn.closeSync();
        instance.closeSync();
      }
    });

  withProject(program.command('run').description('run the pipeline'))
    .option('--model <name...>', 'run only these models (and the models they ref)')
    .option('--dry-run', 'consume one batch, print the output, write and acknowledge nothing')
    .option('--log-json', 'JSON log lines (for production)')
    .addOption(new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR']).default('info'))
    .option('--port <port>', 'HTTP port for /healthz /readyz /metrics (0 = off; default from sluice.yml or 9400)')
    .action(async (o: CommonOpts & { model?: string[]; dryRun?: boolean; logJson?: boolean; logLevel: string; port?: string }) => {
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
      const { project, duckdb } = await loadAndCheckKeep(o);
      const started = Date.now();
      const summary = await new Pipeline({ project, log, port: port ?? project.port, models: o.model, dryRun: o.dryRun, signal: ac.signal, print: (s) => process.stdout.write(s), duckdb }).run();
      if (!o.dryRun) {
        const secs = (Date.now() - started) / 1000;
        log.info({ messages: summary.messages, dead_lettered: summary.deadLettered, redelivered: summary.redelivered, rows: summary.rows, flushes: summary.flushes, seconds: Number(secs.toFixed(2)) }, 'done');
      }
    });

  const models = program.command('models').description('inspect models');
  withProject(models.command('list').description('list the models, their source, sink and dependencies')).action(async (o: CommonOpts) => {
    const { reports } = await loadAndCheck(o);
    const rows = reports.map(({ model, analysis }) => ({
      model: model.name,
      file: model.file,
      source: model.source,
      sink: model.sinks.join(', '),
      refs: model.refs.join(', '),
      kind: analysis.stateful.length ? 'stateful' : 'stateless',
    }));
    out(formatTable([{ name: 'model' }, { name: 'file' }, { name: 'source' }, { name: 'sink' }, { name: 'refs' }, { name: 'kind' }], rows, 60));
  });

  const dlq = program.command('dlq').description('inspect and replay dead letters');
  withProject(dlq.command('inspect').description('show dead letters without consuming them'))
    .option('--limit <n>', 'how many records', '10')
    .addOption(new Option('--format <format>', 'output format').choices(['table', 'json']).default('table'))
    .action(async (o: CommonOpts & { limit: string; format: string }) => {
      const project = loadProject(projectOpts(o));
      const limit = Number(o.limit);
      if (!Number.isInteger(limit) || limit < 0) throw new SluiceError('USAGE', `--limit must be a whole number, got ${o.limit}`);
      const brokerDlq = await openBrokerDlq(project);
      let all: DeadLetter[];
      let where: string;
      if (brokerDlq) {
        all = await brokerDlq.dlq.inspect(limit);
        where = `queue ${brokerDlq.name}`;
        await brokerDlq.dlq.close();
      } else {
        const file = path.join(dlqDir(project), DLQ_FILE);
        all = await readDeadLetters(file);
        where = path.relative(process.cwd(), file) || file;
      }
      const recs = all.slice(0, limit);
      if (o.format === 'json') {
        out(JSON.stringify(recs, null, 2));
        return;
      }
      out(`${brokerDlq ? `${recs.length} dead letter(s) shown from` : `${all.length} dead letter(s) in`} ${where}${all.length > recs.length ? `, showing ${recs.length}` : ''}`);
      if (recs.length) {
        out(formatTable(
          [{ name: 'time' }, { name: 'stage' }, { name: 'source' }, { name: 'error' }, { name: 'payload' }],
          recs.map((r) => ({ time: r.time, stage: r.stage, source: JSON.stringify(r.source), error: r.error, payload: r.payload })),
          60,
        ));
      }
    });

  withProject(dlq.command('replay').description('send dead letters back: to the source queue (brokers) or through the pipeline (files); failures land in the DLQ again'))
    .option('--target <queue>', 'queue to move dead letters to (brokers; default: the queue they came from)')
    .option('--limit <n>', 'move at most this many (brokers)')
    .option('--log-json', 'JSON log lines')
    .option('--log-level <level>', 'log level', 'info')
    .action(async (o: CommonOpts & { logJson?: boolean; logLevel: string; target?: string; limit?: string }) => {
      const log = createLogger({ json: o.logJson, level: o.logLevel });
      const project = loadProject(projectOpts(o));
      const brokerDlq = await openBrokerDlq(project, log);
      if (brokerDlq?.dlq.replay) {
        const limit = o.limit === undefined ? undefined : Number(o.limit);
        if (limit !== undefined && (!Number.isInteger(limit) || limit < 0)) throw new SluiceError('USAGE', `--limit must be a whole number, got ${o.limit}`);
        try {
          const { moved } = await brokerDlq.dlq.replay({ target: o.target, limit });
          out(`moved ${moved} dead letter(s) from ${brokerDlq.name} to ${o.target ?? 'their original queue'}`);
        } finally {
          await brokerDlq.dlq.close();
        }
        return;
      }
      if (o.target || o.limit) throw new SluiceError('USAGE', '--target and --limit apply to broker DLQs; a file DLQ is replayed through the pipeline as a whole');
      const dir = dlqDir(project);
      const current = path.join(dir, DLQ_FILE);
      // Set the current DLQ aside under a unique name; an interrupted replay resumes from it.
      if (fs.existsSync(current) && fs.statSync(current).size > 0) {
        const stamp = new Date().toISOString().replace(/[-:.]/g, '').replace('T', 't').replace('Z', '');
        await fsp.rename(current, path.join(dir, `replay-${stamp}.ndjson`));
      }
      const files = await DlqReplaySource.pendingFiles(dir);
      if (files.length === 0) {
        out('the DLQ is empty; nothing to replay');
        return;
      }
      const ac = new AbortController();
      onStopSignal(() => ac.abort());
      let total = 0;
      let failed = 0;
      for (const file of files) {
        const src = new DlqReplaySource(file, project.sources[0].cfg.batch_size);
        const walDir = path.join(path.dirname(project.walPath), 'replay-wal', path.basename(file, '.ndjson'));
        const summary = await new Pipeline({
          project, log, port: 0, signal: ac.signal, walDir,
          sourceOverride: { source: src, name: project.sources[0].name },
        }).run();
        if (ac.signal.aborted) {
          out(`interrupted; run \`sluice dlq replay\` again to resume ${path.basename(file)}`);
          setCode(1);
          return;
        }
        total += summary.messages;
        failed += summary.deadLettered;
        await fsp.rm(walDir, { recursive: true, force: true });
        await fsp.rm(file, { force: true });
      }
      out(`replayed ${total} dead letter(s): ${total - failed} delivered, ${failed} failed again (back in the DLQ)`);
    });

  return program;
}

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
      for (const i of e.issues) err(`  ${formatIssue(i)}`);
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

