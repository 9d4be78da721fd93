/**
 * The layers of src/, top to bottom (docs/architecture.md). A module may import its own layer
 * and the layers below it, never one above: checked in `npm test` (test/unit/layers.test.ts).
 */
const LAYERS = ['cli', 'runtime', 'engine', 'project', 'wal', 'ops', 'connectors', 'sql', 'util'];

const upward = LAYERS.slice(1).map((layer, i) => ({
  name: `no-upward-from-${layer}`,
  comment: `src/${layer} is below ${LAYERS.slice(0, i + 1).join(', ')}: it must not import them`,
  severity: 'error',
  from: { path: `^src/${layer}/` },
  to: { path: `^src/(${LAYERS.slice(0, i + 1).join('|')})/` },
}));

module.exports = {
  forbidden: [
    ...upward,
    {
      name: 'errors-is-the-bottom',
      comment: 'src/errors.ts is imported by every layer and imports none',
      severity: 'error',
      from: { path: '^src/errors\\.ts$' },
      to: { path: '^src/' },
    },
    {
      name: 'no-circular',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    // TypeScript 7 has no JavaScript API for dependency-cruiser: swc parses the sources.
    parser: 'swc',
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.js'] },
  },
};
