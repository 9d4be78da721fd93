import fs from 'node:fs';
import path from 'node:path';
import { query } from './cli.js';
import type { SinkTarget, SinkUnderTest } from './sink-contract.js';

/**
 * The sink contract's adapter for a file sink on local disk (parquet, jsonl, csv): files read back with
 * DuckDB as a reader would. Breaking it for real: the model's output directory is replaced by
 * a regular file, so the sink's mkdir and rename fail (chmod would not stop root).
 */
export function localFileSink(type: 'parquet' | 'jsonl' | 'csv', extra: { compression?: 'gzip' } = {}): SinkUnderTest {
  const out = (t: SinkTarget) => path.join(t.dir, 'out');
  return {
    name: extra.compression ? `${type}-${extra.compression}` : type,
    idempotent: true,
    config: () => ({ type, path: 'out', ...extra }),
    async readRows(t, model) {
      const dir = path.join(out(t), model);
      if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) return [];
      const files = fs
        .readdirSync(dir, { recursive: true })
        .map(String)
        .filter((f) => f.includes(`.${type}`) && !path.basename(f).startsWith('.'));
      if (files.length === 0) return [];
      return query(readerSql(type, `${dir}/**/*.${type}*`));
    },
    async breakIt(t) {
      fs.mkdirSync(out(t), { recursive: true });
      fs.rmSync(path.join(out(t), 'events'), { recursive: true, force: true });
      fs.writeFileSync(path.join(out(t), 'events'), 'not a directory\n');
    },
    async fixIt(t) {
      fs.rmSync(path.join(out(t), 'events'), { force: true });
    },
  };
}

/** How a reader reads the sink's files: CSV keeps "" (quoted empty) apart from NULL (nothing). */
export function readerSql(type: 'jsonl' | 'csv' | 'parquet', glob: string): string {
  if (type === 'csv') return `SELECT * FROM read_csv('${glob}', header = true, union_by_name = true, allow_quoted_nulls = false, hive_partitioning = false)`;
  if (type === 'jsonl') return `SELECT * FROM read_json('${glob}', format = 'newline_delimited', union_by_name = true, hive_partitioning = false)`;
  return `SELECT * FROM read_parquet('${glob}', union_by_name = true, hive_partitioning = false)`;
}
