import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { parquetFiles, sluice } from '../helpers/cli.js';
import { showcase } from '../helpers/showcase.js';

// The showcase project (sluice init), made once for this file.
const shop = showcase();
const variant = shop.variant;
let p: string;
beforeAll(() => {
  p = shop.dir();
});

const SECRET = 'Sup3r-s3cret-pw';

describe('targets and secrets', () => {
  it('the default target applies; --target and $SLUICE_TARGET pick another; its vars and overrides show in the resolved config', () => {
    const dev = sluice(['validate', '--project', p, '--show-config']);
    expect(dev.code, dev.stderr).toBe(0);
    expect(dev.stdout).toMatch(/\(target dev\)/);
    expect(dev.stdout).toMatch(/sink lake: .*"path":"\.\/output\/lake"/);
    const prod = sluice(['validate', '--project', p, '--show-config', '--target', 'prod']);
    expect(prod.code, prod.stderr).toBe(0);
    expect(prod.stdout).toMatch(/\(target prod\)/);
    expect(prod.stdout).toMatch(/sink lake: .*"path":"\.\/output-prod\/lake".*"compression":"zstd"/);
    const env = sluice(['validate', '--project', p, '--show-config'], { env: { SLUICE_TARGET: 'prod' } });
    expect(env.stdout).toMatch(/\(target prod\)/);
    // The environment wins over a target's vars.
    const own = sluice(['validate', '--project', p, '--show-config', '--target', 'prod'], { env: { OUTPUT_DIR: '/elsewhere' } });
    expect(own.stdout).toMatch(/"path":"\/elsewhere\/lake"/);
  });

  it('run --target writes where the target says', () => {
    const d = variant({});
    const r = sluice(['run', '--project', d, '--port', '0', '--source', 'refunds', '--target', 'prod']);
    expect(r.code, r.stderr).toBe(0);
    expect(parquetFiles(path.join(d, 'output-prod', 'lake', 'refunds'))).toHaveLength(1);
    expect(fs.existsSync(path.join(d, 'output'))).toBe(false);
  });

  it('an unknown target and a bad override are reported with file, key and line', () => {
    const r = sluice(['validate', '--project', p, '--target', 'staging']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/sluice\.yml:\d+: no target named "staging" \(from --target\) \(targets: dev, prod\)/);
    const yml = fs.readFileSync(path.join(p, 'sluice.yml'), 'utf8').replace('        compression: zstd', '        compression: zstd\n        batch_size: lots\n      nowhere:\n        path: x');
    const d = variant({ 'sluice.yml': yml });
    const b = sluice(['validate', '--project', d, '--target', 'prod']);
    expect(b.code).toBe(2);
    const lineOf = (s: string) => yml.split('\n').findIndex((l) => l.includes(s)) + 1;
    expect(b.stderr).toContain(`sluice.yml:${lineOf('batch_size: lots')}: targets.prod.sinks.lake.batch_size: unknown key "batch_size"`);
    expect(b.stderr).toMatch(new RegExp(`sluice\\.yml:${lineOf('nowhere:')}: targets\\.prod\\.sinks\\.nowhere: \\S*config/sinks\\.yml has no sink named "nowhere" to override \\(lake, alerts\\)`));
  });

  it('secrets are masked in validate, compile and error output', () => {
    const d = variant({
      'config/sources.yml':
        fs.readFileSync(path.join(p, 'config/sources.yml'), 'utf8') +
        `  events:\n    type: rabbitmq\n    url: amqp://app:${SECRET}@127.0.0.1:5672/\n    queue: q\n  more:\n    type: rabbitmq\n    password: \${RABBIT_PASSWORD}\n    queue: q2\n`,
      'models/ev.sql': "{{ config(sink='lake') }}\nSELECT e.id FROM {{ source('events') }} AS e\n",
      'models/ev2.sql': "{{ config(sink='lake') }}\nSELECT e.id FROM {{ source('more') }} AS e\n",
    });
    const env = { RABBIT_PASSWORD: 'an0ther-secret' };
    const v = sluice(['validate', '--project', d, '--show-config'], { env });
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toContain('"url":"amqp://****@127.0.0.1:5672/"');
    expect(v.stdout).toContain('"password":"****"');
    const c = sluice(['compile', '--project', d], { env });
    for (const out of [v.stdout, v.stderr, c.stdout, c.stderr]) {
      expect(out).not.toContain(SECRET);
      expect(out).not.toContain('an0ther-secret');
    }
    // A secret that ends up in an error message is masked too.
    const bad = variant({ 'models/leak.sql': "SELECT 'an0ther-secret' AS x FROM {{ ref('nope') }}\n", 'config/sources.yml': fs.readFileSync(path.join(d, 'config/sources.yml'), 'utf8') });
    fs.cpSync(path.join(d, 'models'), path.join(bad, 'models'), { recursive: true });
    const e = sluice(['validate', '--project', bad], { env });
    expect(e.code).toBe(2);
    expect(e.stderr).toMatch(/ref\('nope'\)/);
    expect(e.stderr).not.toContain(SECRET);
  });
});
