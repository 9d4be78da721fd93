import { ConfigError } from '../errors.js';
import { contractIssues } from '../engine/contracts.js';
import type { Project } from '../project/project-loader.js';
import { fixturesFor, runFixtures } from '../engine/offline-runner.js';

/**
 * `validate`'s contract check: when a model declares a contract and its source has a fixture,
 * the models run on it with every type change refused, and what breaks the contract (a
 * declared column not produced, a value that does not cast to its declared type, an
 * undeclared column under new_columns: freeze) is a config error at its line.
 */
export async function checkContracts(project: Project): Promise<void> {
  const contracted = project.models.filter((m) => m.contract);
  if (contracted.length === 0) return;
  const needed = [...new Set(contracted.map((m) => m.source))];
  const fixtures = fixturesFor(project, [], needed);
  if (fixtures.size === 0) return;
  const strict = project.models.map((m) => (m.contract ? { ...m, contract: { ...m.contract, typeChanges: 'freeze' as const } } : m));
  const run = await runFixtures(project, fixtures, strict);
  const issues = contractIssues(strict, { failures: run.failures, missing: run.missing, fixtures: [...fixtures.values()].map((f) => f.replace(`${project.dir}/`, '')) });
  if (issues.length) throw new ConfigError(issues);
}
