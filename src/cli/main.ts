import { Command, CommanderError } from 'commander';
import { ConfigError, SluiceError, errorMessage, formatIssue } from '../errors.js';
import { releaseStopSignals } from './stop-signals.js';
import { planCommands } from './plan.js';
import { err } from './output.js';
import { createCliContext, type CommonOpts } from './commands/context.js';
import { registerInit } from './commands/init.js';
import { registerValidate } from './commands/validate.js';
import { registerCompile } from './commands/compile.js';
import { registerTest } from './commands/test.js';
import { registerRun } from './commands/run.js';
import { registerModels } from './commands/models.js';
import { registerLineage } from './commands/lineage.js';
import { registerDocs } from './commands/docs.js';
import { registerDlq } from './commands/dlq.js';

/** The program with every command, in the order `sluice --help` lists them (each in src/cli/commands/, plan and apply in plan.ts). */
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

  const ctx = createCliContext(setCode);
  registerInit(program, ctx);
  registerValidate(program, ctx);
  registerCompile(program, ctx);
  registerTest(program, ctx);
  registerRun(program, ctx);
  registerModels(program, ctx);
  registerLineage(program, ctx);
  registerDocs(program, ctx);
  registerDlq(program, ctx);
  planCommands<CommonOpts>(program, { withProject: ctx.withProject, load: ctx.loadAndCheck, out: ctx.out, setCode });

  return program;
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
