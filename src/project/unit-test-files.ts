import fs from 'node:fs';
import path from 'node:path';
import type { ConfigIssue } from '../errors.js';
import { unitTestsOf, type UnitTest } from './data-test-config.js';
import type { ModelDef, NamedSource } from './project-types.js';
import { readYaml } from './yaml-file.js';

/** The unit test cases of tests/*.yml (optional; tests/ also holds fixtures, which are not read here). */
export function readUnitTests(dir: string, env: NodeJS.ProcessEnv, sources: NamedSource[], models: ModelDef[], issues: ConfigIssue[], show: (file: string) => string): UnitTest[] {
  const testsDir = path.join(dir, 'tests');
  const testsIsDir = fs.existsSync(testsDir) && fs.statSync(testsDir).isDirectory();
  if (fs.existsSync(testsDir) && !testsIsDir) issues.push({ file: show(testsDir), message: 'is a file, not the tests directory (fixtures and tests/*.yml)' });
  const unitFiles = testsIsDir
    ? fs
        .readdirSync(testsDir)
        .filter((f) => /\.ya?ml$/.test(f))
        .sort()
    : [];
  return unitTestsOf(
    unitFiles.map((f) => readYaml(path.join(testsDir, f), env, issues, show(path.join(testsDir, f)))!),
    sources,
    models,
    issues,
  );
}
