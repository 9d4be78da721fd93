import { formatTable } from './format.js';
import { failureText, type TestResult } from '../engine/data-tests.js';
import type { UnitTestOutcome } from '../engine/unit-tests.js';
import { describeTest } from '../project/data-test-config.js';

/** The report `sluice test` prints: one line per data test, examples of failing rows, unit test diffs. */
export function formatTestReport(data: TestResult[], units: UnitTestOutcome[]): string {
  const parts: string[] = [];
  if (data.length) {
    const rows = data.map((r) => ({
      result: r.failing ? 'FAIL' : 'pass',
      test: r.test.name,
      model: r.test.model,
      column: r.test.column ?? '',
      check: describeTest(r.test),
      'failing rows': r.failing,
    }));
    parts.push(`data tests\n${formatTable([{ name: 'result' }, { name: 'test' }, { name: 'model' }, { name: 'column' }, { name: 'check' }, { name: 'failing rows' }], rows, 60)}`);
    for (const r of data.filter((x) => x.failing)) {
      parts.push(
        `FAIL ${r.test.name} (${r.test.model}${r.test.column ? `.${r.test.column}` : ''}): ${r.failing} row(s) where ${failureText(r.test)}; e.g.\n${r.examples.map((e) => `    ${JSON.stringify(e)}`).join('\n')}`,
      );
    }
  }
  if (units.length) {
    const lines = ['unit tests'];
    for (const u of units) {
      lines.push(`  ${u.ok ? 'pass' : 'FAIL'} ${u.test.name} (${u.test.file}${u.test.line ? `:${u.test.line}` : ''})`);
      for (const p of u.problems) lines.push(`    ${p}`);
    }
    parts.push(lines.join('\n'));
  }
  const failedData = data.filter((r) => r.failing).length;
  const failedUnits = units.filter((u) => !u.ok).length;
  if (data.length || units.length) {
    parts.push(`${data.length} data test(s): ${data.length - failedData} passed, ${failedData} failed; ${units.length} unit test(s): ${units.length - failedUnits} passed, ${failedUnits} failed`);
  }
  return parts.join('\n\n');
}
