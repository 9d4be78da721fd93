import { defineConfig } from 'vitest/config';
import LongestFirstSequencer from './test/sequencer.ts';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'src/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    // Files run tests concurrently where they are independent: a test's wall time includes
    // waiting for its neighbours' share of the two cores.
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: 'forks',
    fileParallelism: true,
    maxWorkers: 2,
    // Longest files first, and the files that stop PostgreSQL beside ones that do not use it.
    sequence: { sequencer: LongestFirstSequencer },
  },
});
