import readline from 'node:readline';
import type { Command } from 'commander';
import { SluiceError, errorMessage } from '../errors.js';
import type { InfraChange, InfraClaim, InfraNote, InfraPlanner, ModelShape } from '../connectors/infra.js';
import type { Project } from '../project/project-loader.js';
import { silentLogger } from '../ops/logger.js';
import { workerId } from '../engine/pipeline.js';
import { fixturesFor, runFixtures } from '../engine/offline-runner.js';

/** The changes one connector (a source or a sink) needs, with the planner that makes them. */
export interface PlannedTarget {
  /** `sink pg (postgres)`, `source orders (rabbitmq)`. */
  label: string;
  changes: InfraChange[];
  /** What the plan found that is no change. */
  notes: InfraNote[];
  /** Unset when the planner could not even be made. */
  planner?: InfraPlanner;
  /** Why this connector could not be planned (its broker or database unreachable, ...): it has no changes then. */
  failed?: string;
}

export interface PlanOptions {
  fixture?: string[];
}

/**
 * Model columns as DuckDB types, from running the models on the project's fixtures (the same
 * fixtures `sluice test` uses): nothing is connected and no message is read from a source.
 */
export async function modelShapes(project: Project, opts: PlanOptions): Promise<Map<string, ModelShape>> {
  const needed = [...new Set(project.models.map((m) => m.source))];
  const fixtures = fixturesFor(project, opts.fixture ?? [], needed);
  const missing = needed.filter((s) => !fixtures.has(s));
  if (missing.length) {
    throw new SluiceError(
      'USAGE',
      `plan infers each model's columns by running it on a fixture; none for source ${missing.join(', ')}: add tests/<source>.json (or tests/sample.json) or pass --fixture`,
    );
  }
  const run = await runFixtures(project, fixtures);
  return new Map([...run.outputs].filter(([, o]) => o.columns.length > 0).map(([model, o]) => [model, { model, columns: o.columns }]));
}

/**
 * What every connector with a planner needs, against what exists: each source and sink whose
 * spec has a `planner()` (sources first). The models run on the fixtures only when a sink's
 * planner needs their columns (tables); queues, streams and topics need none. A connector that
 * cannot be planned (its broker unreachable) is reported as such, with no changes, and the
 * others are planned all the same.
 */
export async function planProject(project: Project, opts: PlanOptions): Promise<{ targets: PlannedTarget[]; unplanned: string[] }> {
  const ctx = { projectDir: project.dir, log: silentLogger(), workerId: workerId() };
  const targets: PlannedTarget[] = [];
  const sinkOf = new Map<PlannedTarget, string>();
  const unplanned: string[] = [];
  const add = async (label: string, make: () => Promise<InfraPlanner>): Promise<PlannedTarget> => {
    const t: PlannedTarget = { label, changes: [], notes: [] };
    try {
      t.planner = await make();
    } catch (err) {
      t.failed = errorMessage(err);
    }
    targets.push(t);
    return t;
  };
  try {
    for (const src of project.sources) {
      if (src.spec.planner) await add(`source ${src.name} (${src.type})`, () => src.spec.planner!(src.cfg, ctx));
    }
    for (const sink of project.sinks) {
      if (sink.spec.planner) sinkOf.set(await add(`sink ${sink.name} (${sink.type})`, () => sink.spec.planner!(sink.cfg, ctx)), sink.name);
    }
    const shaped = (t: PlannedTarget) => sinkOf.has(t) && t.planner?.needsModels !== false;
    const shapes = targets.some(shaped) ? await modelShapes(project, opts) : new Map<string, ModelShape>();
    for (const t of targets) {
      if (!t.planner) continue;
      let known: ModelShape[] = [];
      if (shaped(t)) {
        const sink = sinkOf.get(t)!;
        const models = project.models.filter((m) => m.sinks.includes(sink));
        known = models.flatMap((m) => shapes.get(m.name) ?? []);
        for (const m of models) if (!shapes.has(m.name)) unplanned.push(`model ${m.name}: no rows from the fixtures, so its columns are unknown (sink ${sink})`);
      }
      try {
        t.changes = await t.planner.plan(known);
        t.notes = t.planner.notes?.() ?? [];
      } catch (err) {
        t.changes = [];
        t.notes = [];
        t.failed = errorMessage(err);
      }
    }
  } catch (err) {
    await closeAll(targets);
    throw err;
  }
  reconcile(targets);
  return { targets, unplanned };
}

/**
 * Where connectors of the project name the same stream or topic: claims that cannot both be met
 * become a warning on each connector instead of changes that would undo each other on every
 * apply; a change that recreates what another connector must keep becomes a warning; of claims
 * that agree, only the most specific one's changes are kept (the object is made once).
 */
function reconcile(targets: PlannedTarget[]): void {
  const byKey = new Map<string, { t: PlannedTarget; c: InfraClaim }[]>();
  for (const t of targets) {
    if (t.failed) continue;
    for (const c of t.planner?.claims?.() ?? []) {
      const list = byKey.get(c.key) ?? byKey.set(c.key, []).get(c.key)!;
      if (!list.some((x) => x.t === t)) list.push({ t, c });
    }
  }
  const drop = (t: PlannedTarget, object: string, keep: (c: InfraChange) => boolean = () => false) => {
    const gone = t.changes.filter((c) => c.object === object && !keep(c));
    t.changes = t.changes.filter((c) => !gone.includes(c));
    return gone;
  };
  const declared = (x: { t: PlannedTarget; c: InfraClaim }) => `${x.t.label} ${x.c.wants.length ? `declares ${x.c.wants.join(', ')}` : 'needs it'}`;
  for (const claims of byKey.values()) {
    if (claims.length < 2) continue;
    const object = claims[0].c.object.replace(/^\S+ /, '');
    let clashed = false;
    for (const [i, a] of claims.entries()) {
      for (const b of claims.slice(i + 1)) {
        const why = a.c.conflict(b.c) ?? b.c.conflict(a.c);
        if (!why) continue;
        clashed = true;
        for (const [me, other] of [
          [a, b],
          [b, a],
        ]) {
          drop(me.t, me.c.object);
          me.t.notes.push({
            problem: true,
            text: `${object}: ${declared(me)}, but ${declared(other)} (${why}): plan changes it for neither, as each apply would undo the other's change; make the two configs agree`,
          });
        }
      }
    }
    if (clashed) continue;
    for (const keeper of claims.filter((x) => x.c.keep)) {
      for (const other of claims) {
        if (other.t === keeper.t) continue;
        for (const c of drop(other.t, other.c.object, (c) => !c.destructive)) {
          other.t.notes.push({ problem: true, text: `${object}: plan leaves out "${c.summary.replace(/^[-~+] /, '')}", as ${keeper.t.label} needs it kept: ${keeper.c.keep}` });
        }
      }
    }
    const first = claims.reduce((best, x) => (x.c.wants.length > best.c.wants.length ? x : best));
    for (const other of claims) {
      if (other === first || !drop(other.t, other.c.object).length) continue;
      other.t.notes.push({ text: `${object}: also needed by ${first.t.label}; its changes are listed there` });
    }
  }
  for (const t of targets) if (!t.changes.length) t.notes = t.notes.filter((n) => !n.aboutChanges);
}

export async function closeAll(targets: PlannedTarget[]): Promise<void> {
  for (const t of targets) await t.planner?.close().catch(() => {});
}

/** The plan as text, one line per change, note and warning. */
export function formatPlan(targets: PlannedTarget[], unplanned: string[]): string {
  const lines: string[] = [];
  for (const t of targets) {
    lines.push(`${t.label}:`);
    if (t.failed) lines.push(`  warning: not planned: ${t.failed}`);
    else if (t.changes.length === 0 && !t.notes.some((n) => n.problem)) lines.push('  up to date');
    for (const c of t.changes) lines.push(`  ${c.summary}${c.destructive ? '   [destructive]' : ''}`);
    for (const n of t.notes) lines.push(`  ${n.problem ? 'warning' : 'note'}: ${n.text}`);
  }
  for (const u of unplanned) lines.push(`warning: ${u}`);
  const all = targets.flatMap((t) => t.changes);
  const destructive = all.filter((c) => c.destructive).length;
  const problems = targets.flatMap((t) => t.notes).filter((n) => n.problem).length;
  const failed = targets.filter((t) => t.failed).length;
  const notPlanned = failed ? `; ${failed} connector(s) not planned (see above)` : '';
  if (targets.length === 0) lines.push('no source or sink of this project has tables, queues, streams, topics or other infrastructure to plan');
  else if (all.length === 0) lines.push(`${problems ? `nothing to change; ${problems} warning(s) above that apply cannot fix` : 'nothing to change'}${notPlanned}`);
  else lines.push(`${all.length} change(s), ${destructive} destructive${destructive ? ' (applied only with --allow-destructive)' : ''}${notPlanned}`);
  return lines.join('\n');
}

/** What `confirm` heard: a yes, another answer, the input's end, or nothing within the time allowed. */
export type Confirmation = 'yes' | 'no' | 'ended' | 'timeout';

/**
 * Asks for a yes on standard input, a terminal or not (a script may pipe the answer in). Off a
 * terminal it waits `timeoutMs` at most: a pipe that stays open without an answer would hold
 * the command forever. At a terminal it waits for the person.
 */
export async function confirm(question: string, timeoutMs: number): Promise<Confirmation> {
  const tty = Boolean(process.stdin.isTTY);
  const rl = readline.createInterface({ input: process.stdin, output: process.stdout, terminal: tty });
  let timer: NodeJS.Timeout | undefined;
  try {
    process.stdout.write(`${question} (yes/no) `);
    const heard = await new Promise<string | Exclude<Confirmation, 'yes' | 'no'>>((resolve) => {
      rl.once('line', resolve);
      rl.once('close', () => resolve('ended'));
      if (!tty) timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    // Off a terminal the answer is not echoed: end the question's line.
    if (heard === 'ended' || heard === 'timeout' || !tty) process.stdout.write('\n');
    if (heard === 'ended' || heard === 'timeout') return heard;
    return /^y(es)?$/i.test(heard.trim()) ? 'yes' : 'no';
  } finally {
    clearTimeout(timer);
    rl.close();
    // An open pipe would keep the process alive after the command is done.
    if (!tty) process.stdin.destroy();
  }
}

export interface ApplyResult {
  applied: number;
  /** Destructive changes left out (no --allow-destructive). */
  skipped: InfraChange[];
  /** Changes that failed, with why. */
  failed: { change: InfraChange; error: string }[];
  /** Changes not tried because an earlier change of the same connector failed (they may build on it). */
  notTried: InfraChange[];
}

/**
 * Applies the planned changes in order. Destructive ones only with `allowDestructive`; the
 * others are applied and the skipped ones returned. A change that fails is reported and the
 * rest of its connector's changes are not tried; other connectors' changes go on.
 */
export async function applyPlan(targets: PlannedTarget[], allowDestructive: boolean, say: (s: string) => void): Promise<ApplyResult> {
  const r: ApplyResult = { applied: 0, skipped: [], failed: [], notTried: [] };
  for (const t of targets) {
    let broken = false;
    for (const c of t.changes) {
      if (c.destructive && !allowDestructive) {
        r.skipped.push(c);
        continue;
      }
      if (broken) {
        r.notTried.push(c);
        continue;
      }
      try {
        await c.apply();
      } catch (err) {
        // Anything but a SluiceError is a bug: let it surface with its stack.
        if (!(err instanceof SluiceError)) throw err;
        broken = true;
        r.failed.push({ change: c, error: err.message });
        say(`failed: ${c.summary}\n  ${err.message}`);
        continue;
      }
      r.applied++;
      say(`applied: ${c.summary}`);
    }
  }
  return r;
}

interface CommandDeps<O> {
  withProject(cmd: Command): Command;
  /** Loads and checks the project as every command does. */
  load(o: O): Promise<{ project: Project }>;
  out(s: string): void;
  setCode(n: number): void;
}

/** `sluice plan` and `sluice apply`. */
export function planCommands<O extends object>(program: Command, deps: CommandDeps<O>): void {
  const fixtureOpt = '--fixture <file...>';
  const fixtureHelp = 'fixtures the models run on to infer the columns of table sinks (SOURCE=FILE or FILE; default: tests/)';
  deps
    .withProject(
      program
        .command('plan')
        .description(
          "show how what the project needs outside sluice differs from what exists: the sinks' tables, the sources' and sinks' queues, exchanges, bindings, streams and topics, dead-letter ones included (nothing is changed)",
        ),
    )
    .option(fixtureOpt, fixtureHelp)
    .action(async (o: O & PlanOptions) => {
      const { project } = await deps.load(o);
      const { targets, unplanned } = await planProject(project, o);
      try {
        deps.out(formatPlan(targets, unplanned));
        if (targets.some((t) => t.changes.length)) deps.out('run `sluice apply` to make these changes');
        // What the connectors that could not be planned need is unknown: not a clean plan.
        if (targets.some((t) => t.failed)) deps.setCode(1);
      } finally {
        await closeAll(targets);
      }
    });
  deps
    .withProject(program.command('apply').description('create or change the tables, queues, exchanges, bindings, streams and topics as `sluice plan` shows'))
    .option(fixtureOpt, fixtureHelp)
    .option('--auto-approve', 'apply without asking')
    .option('--confirm-timeout <seconds>', 'when standard input is not a terminal, how long to wait for the answer before giving up', '60')
    .option(
      '--allow-destructive',
      'also make destructive changes: drop columns the models no longer produce, retype incompatible columns, recreate queues, exchanges and topics (losing what they hold; never a topic a source reads), remove subjects from streams',
    )
    .action(async (o: O & PlanOptions & { autoApprove?: boolean; allowDestructive?: boolean; confirmTimeout: string }) => {
      const wait = Number(o.confirmTimeout);
      if (!(wait > 0)) throw new SluiceError('USAGE', `--confirm-timeout: expected a number of seconds above 0, got ${o.confirmTimeout}`);
      const { project } = await deps.load(o);
      const { targets, unplanned } = await planProject(project, o);
      try {
        deps.out(formatPlan(targets, unplanned));
        const todo = targets.flatMap((t) => t.changes).filter((c) => (c.destructive ? o.allowDestructive : true));
        if (todo.length && !o.autoApprove) {
          const heard = await confirm(`apply ${todo.length} change(s)?`, wait * 1000);
          if (heard === 'timeout') {
            throw new SluiceError(
              'USAGE',
              `apply asks for confirmation, and standard input (not a terminal) gave no answer within ${wait} s; pass --auto-approve to apply without asking, or write yes to it`,
            );
          }
          if (heard === 'ended' && !process.stdin.isTTY) {
            throw new SluiceError('USAGE', 'apply asks for confirmation and standard input gave no answer; answer yes on it, or pass --auto-approve to apply without asking');
          }
          if (heard !== 'yes') {
            deps.out('nothing applied');
            return;
          }
        }
        const r = await applyPlan(targets, o.allowDestructive ?? false, deps.out);
        deps.out(`${r.applied} change(s) applied`);
        if (r.failed.length) {
          const rest = r.notTried.length ? `; ${r.notTried.length} change(s) after them not tried:\n${r.notTried.map((c) => `  ${c.summary}`).join('\n')}` : '';
          deps.out(`${r.failed.length} change(s) failed (see above)${rest}`);
          deps.setCode(1);
        }
        if (r.skipped.length) {
          deps.out(`${r.skipped.length} destructive change(s) skipped (rerun with --allow-destructive to apply them):\n${r.skipped.map((c) => `  ${c.summary}`).join('\n')}`);
          deps.setCode(1);
        }
        const failed = targets.filter((t) => t.failed);
        if (failed.length) {
          deps.out(`not planned, so nothing applied to: ${failed.map((t) => t.label).join(', ')} (see above)`);
          deps.setCode(1);
        }
      } finally {
        await closeAll(targets);
      }
    });
}
