import fs from 'node:fs';
import path from 'node:path';
import { query } from '../helpers/cli.js';
import { sinkContract, type SinkTarget, type SinkUnderTest } from '../helpers/sink-contract.js';

// The sink contract for the parquet sink on local disk. Breaking it for real: the model's output
// directory is replaced by a regular file, so the sink's mkdir and rename fail (chmod would not
// stop root).

const out = (t: SinkTarget) => path.join(t.dir, 'out');

const parquet: SinkUnderTest = {
  name: 'parquet',
  idempotent: true,
  config: () => ({ type: 'parquet', path: 'out' }),
  async readRows(t, model) {
    const dir = path.join(out(t), model);
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) return [];
    const files = fs.readdirSync(dir, { recursive: true }).map(String).filter((f) => f.endsWith('.parquet') && !path.basename(f).startsWith('.'));
    if (files.length === 0) return [];
    return query(`SELECT * FROM read_parquet('${dir}/**/*.parquet', union_by_name = true)`);
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

sinkContract(parquet);
