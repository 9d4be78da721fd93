/**
 * Secret masking: one place that decides what a secret looks like, used by every command that
 * prints configuration and by the logger.
 *
 * A value is secret when
 * - its key looks secret (password, passwd, secret, token, key, credentials, auth, ...), or
 * - it came from `${VAR}` and VAR's name looks secret (PG_PASSWORD, API_TOKEN, ...), or
 * - it is the userinfo of a URL (`postgres://user:pass@host` -> `postgres://****@host`).
 * Known secret values are remembered (registerSecret) so they are masked wherever they show up
 * in text, including inside error messages of client libraries.
 */

export const MASK = '****';

const SECRET_NAME = /(pass(word|wd|phrase)?|secret|token|api[_-]?key|private[_-]?key|access[_-]?key|(^|[_-])key$|^key$|credentials?|auth(orization)?|cookie|session|signature|sasl)/i;
// Names that look secret but hold none: names of variables or files, header names, key columns.
const NOT_SECRET = /(_env|_var|_file|_path|_header|_scheme|_column|_columns|_template|_prefix|_bytes)$|^(dedupe_key|partition_key|routing_key|binding_key|keys?|primary_key|sort_key|keyspace)$/i;

/** True for a config key or variable name that holds a secret. */
export function isSecretName(name: string): boolean {
  return SECRET_NAME.test(name) && !NOT_SECRET.test(name);
}

const known = new Set<string>();

/** Remembers a secret value so maskText() hides it wherever it appears. Short values are ignored (too many false hits). */
export function registerSecret(value: unknown): void {
  if (typeof value !== 'string' && typeof value !== 'number') return;
  const s = String(value);
  if (s.length >= 4) known.add(s);
  try {
    // A URL-encoded form may show up in connection strings.
    const enc = encodeURIComponent(s);
    if (enc !== s && enc.length >= 4) known.add(enc);
  } catch {
    // not encodable: nothing more to remember
  }
}

/** Forgets remembered secrets (tests). */
export function clearSecrets(): void {
  known.clear();
}

const URL_USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)([^\s/@:]+(?::[^\s/@]*)?)@/gi;

/** Masks the userinfo of every URL in `text` and every registered secret value. */
export function maskText(text: string): string {
  let out = text.replace(URL_USERINFO, (_m, scheme: string) => `${scheme}${MASK}@`);
  // Longest first, so a secret containing another is masked whole.
  for (const s of [...known].sort((a, b) => b.length - a.length)) {
    if (!out.includes(s)) continue;
    // A short secret is masked only as a whole word ("pass" must not turn "passed" into "****ed").
    out = s.length >= 8 ? out.split(s).join(MASK) : out.replace(new RegExp(`(?<![A-Za-z0-9])${escapeRe(s)}(?![A-Za-z0-9])`, 'g'), MASK);
  }
  return out;
}

/**
 * A copy of a config value with secrets masked: values under secret-looking keys become
 * `****`, strings have URL userinfo and registered secrets masked. Registers what it masks.
 */
export function maskConfig<T>(value: T, key = ''): T {
  if (value === null || value === undefined) return value;
  if (Array.isArray(value)) return value.map((v) => maskConfig(v, key)) as T;
  if (typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) out[k] = maskConfig(v, k);
    return out as T;
  }
  if (key && isSecretName(key) && (typeof value === 'string' || typeof value === 'number')) {
    registerSecret(value);
    return MASK as T;
  }
  if (typeof value === 'string') return maskText(value) as T;
  return value;
}

/** Walks a config value and registers every secret it holds (values under secret keys, URL passwords). */
export function registerConfigSecrets(value: unknown, key = ''): void {
  if (value === null || value === undefined) return;
  if (Array.isArray(value)) {
    for (const v of value) registerConfigSecrets(v, key);
  } else if (typeof value === 'object') {
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) registerConfigSecrets(v, k);
  } else if (key && isSecretName(key)) {
    registerSecret(value);
  } else if (typeof value === 'string') {
    for (const m of value.matchAll(URL_USERINFO)) {
      const pass = m[2].split(':').slice(1).join(':');
      if (pass) registerSecret(decodeURIComponentSafe(pass));
    }
  }
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function decodeURIComponentSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** Key paths pino redacts in log objects (one and two levels deep). */
export const REDACT_PATHS = ['password', 'secret', 'token', 'api_key', 'credentials', 'authorization'].flatMap((k) => [k, `*.${k}`, `*.*.${k}`]);
