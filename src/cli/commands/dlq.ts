import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Option, type Command } from 'commander';
import { SluiceError } from '../../errors.js';
import { loadProject, type Project } from '../../project/project-loader.js';
import { Pipeline, defaultDlqDir, workerId } from '../../engine/pipeline.js';
import type { DeadLetter, DeadLetterQueue } from '../../connectors/types.js';
import { createLogger, silentLogger, type Logger } from '../../ops/logger.js';
import { DLQ_FILE, readDeadLetters } from '../../connectors/file/file-dlq.js';
import { DlqReplaySource } from '../../connectors/file/dlq-replay-source.js';
import { formatTable } from '../format.js';
import { onStopSignal } from '../stop-signals.js';
import { scopeDlqs, type ScopedRun } from '../source-scope.js';
import type { CliContext, CommonOpts } from './context.js';

/** `sluice dlq inspect` and `sluice dlq replay`. */
export function registerDlq(program: Command, ctx: CliContext): void {
  const dlq = program.command('dlq').description('inspect and replay dead letters');
  registerInspect(dlq, ctx);
  registerReplay(dlq, ctx);
}

function registerInspect(dlq: Command, { withProject, projectOpts, out }: CliContext): void {
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
        const { all, where, broker } = await readDlq(scope, limit);
        const recs = all.slice(0, limit);
        if (o.format === 'json') {
          json.push(...recs.map((r) => (many ? { source_name: scope.source, ...r } : r)));
          continue;
        }
        const of = many ? `source ${scope.source}: ` : '';
        out(`${of}${broker ? `${recs.length} dead letter(s) shown from` : `${all.length} dead letter(s) in`} ${where}${all.length > recs.length ? `, showing ${recs.length}` : ''}`);
        if (recs.length) {
          out(
            formatTable(
              [{ name: 'time' }, { name: 'stage' }, { name: 'source' }, { name: 'error' }, { name: 'payload' }],
              recs.map((r) => ({ time: r.time, stage: r.stage, source: JSON.stringify(r.source), error: r.error, payload: r.payload })),
              60,
            ),
          );
        }
      }
      if (o.format === 'json') out(JSON.stringify(json, null, 2));
    });
}

/**
 * The dead letters of one scoped source, without consuming them: up to `limit` from a broker
 * DLQ, all of a file DLQ; `where` names the queue or file.
 */
async function readDlq(scope: ScopedRun, limit: number): Promise<{ all: DeadLetter[]; where: string; broker: boolean }> {
  const brokerDlq = await openBrokerDlq(scope);
  if (brokerDlq) {
    let all: DeadLetter[];
    try {
      all = await brokerDlq.dlq.inspect(limit);
    } finally {
      await brokerDlq.dlq.close();
    }
    return { all, where: `queue ${brokerDlq.name}`, broker: true };
  }
  const file = path.join(dlqDir(scope.project), DLQ_FILE);
  const all = await readDeadLetters(file);
  return { all, where: path.relative(process.cwd(), file) || file, broker: false };
}

function registerReplay(dlq: Command, ctx: CliContext): void {
  const { withProject, projectOpts, out, setCode } = ctx;
  // Here --target names the queue to replay to (as it always has); the environment comes from $SLUICE_TARGET.
  withProject(
    dlq
      .command('replay')
      .description(
        'send dead letters back: to the source queue (brokers) or through the pipeline (files); failures land in the DLQ again (every source, or the one named with --source; environment: $SLUICE_TARGET)',
      ),
    false,
  )
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
      if (o.target && scopes.length > 1)
        throw new SluiceError('USAGE', `--target names one queue: choose the source whose dead letters go there with --source (sources: ${scopes.map((s) => s.source).join(', ')})`);
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
        const done = await replayFileDlq(scope, log, ac.signal, out);
        if (done === 'interrupted') {
          setCode(1);
          return;
        }
        out(`${of}${done}`);
      }
    });
}

/**
 * Replays a file DLQ through the source's pipeline: the current DLQ file is set aside under a
 * unique name first, so an interrupted replay resumes from it. Returns the summary line, or
 * 'interrupted' (after saying how to resume).
 */
async function replayFileDlq(scope: ScopedRun, log: Logger, signal: AbortSignal, out: CliContext['out']): Promise<string> {
  const { project } = scope;
  if (scope.group) {
    throw new SluiceError(
      'USAGE',
      `source ${scope.source} runs in one pipeline with ${scope.group.filter((g) => g !== scope.source).join(', ')} (a stream join of two sources): its file DLQ cannot be replayed through the pipeline alone; inspect it with \`sluice dlq inspect --source ${scope.source}\` and send the messages to the source again`,
    );
  }
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
    const src = new DlqReplaySource(file);
    const walDir = path.join(path.dirname(project.walPath), 'replay-wal', ...(scope.scopedWorkerId ? [scope.source] : []), path.basename(file, '.ndjson'));
    const summary = await new Pipeline({
      project,
      log,
      signal,
      walDir,
      scopedWorkerId: scope.scopedWorkerId,
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

/** The DLQ of a broker source (its own queue), or undefined for file DLQs. */
async function openBrokerDlq(scope: ScopedRun, log = silentLogger()): Promise<{ dlq: DeadLetterQueue; name: string } | undefined> {
  const { project } = scope;
  const src = project.sources[0];
  if (src?.spec.dlq.kind !== 'broker' || !src.spec.createDlq) return undefined;
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
  return scopeDlqs(project, source);
}
