import type { Command } from 'commander';
import type { ProjectOptions } from '../../project/project-loader.js';
import { err, out } from '../output.js';
import { loadAndCheck, loadAndCheckKeep, projectOpts, withProject, type CommonOpts } from '../project-check.js';

export type { CommonOpts } from '../project-check.js';

/** What every command's register function gets: the helpers the commands share. */
export interface CliContext {
  /** Adds --project, --config, --models and (unless targetFlag is false) --target. */
  withProject(cmd: Command, targetFlag?: boolean): Command;
  /** The loader options of those flags. */
  projectOpts(o: CommonOpts): ProjectOptions;
  loadAndCheck: typeof loadAndCheck;
  loadAndCheckKeep: typeof loadAndCheckKeep;
  /** Writers to stdout and stderr, with secrets masked and a newline ensured. */
  out(s: string): void;
  err(s: string): void;
  /** Sets the exit code main() returns. */
  setCode(n: number): void;
}

export function createCliContext(setCode: (n: number) => void): CliContext {
  return { withProject, projectOpts, loadAndCheck, loadAndCheckKeep, out, err, setCode };
}
