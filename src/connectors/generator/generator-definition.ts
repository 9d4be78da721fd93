import { defineSource } from '../define.js';
import { generatorSourceSchema } from './generator-config.js';

export const generatorSource = defineSource({
  type: 'generator',
  schema: generatorSourceSchema,
  description: 'synthetic order events for demos and benchmarks',
  dlq: { kind: 'directory', defaultBesideWal: true },
  metadata: [],
  async create(cfg, ctx) {
    const { GeneratorSource } = await import('./generator-source.js');
    return new GeneratorSource(cfg, ctx);
  },
  async createDlq(cfg, ctx) {
    const { openDirectoryDlq } = await import('../file/file-dlq.js');
    return openDirectoryDlq(cfg.dlq, ctx.projectDir);
  },
});
