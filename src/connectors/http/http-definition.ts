import { defineSink } from '../define.js';
import { httpSinkSchema } from './http-config.js';

export const httpSink = defineSink({
  type: 'http',
  schema: httpSinkSchema,
  description: 'rows as batched HTTP requests of JSON, with an Idempotency-Key',
  async create(cfg, ctx) {
    const { HttpSink } = await import('./http-sink.js');
    return new HttpSink(cfg, ctx);
  },
});
