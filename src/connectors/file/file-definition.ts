import { defineSource } from '../define.js';
import { fileSourceSchema } from './file-config.js';

export const fileSource = defineSource({
  type: 'file',
  schema: fileSourceSchema,
  description: 'NDJSON files (a file, a directory or a glob); finite unless follow: true',
  dlq: { kind: 'directory', defaultBesideWal: true },
  metadata: ['_topic', '_offset'],
  async create(cfg, ctx) {
    const { FileSource } = await import('./file-source.js');
    return new FileSource(cfg, ctx);
  },
  async createDlq(cfg, ctx) {
    const { openDirectoryDlq } = await import('./file-dlq.js');
    return openDirectoryDlq(cfg.dlq, ctx.projectDir);
  },
});
