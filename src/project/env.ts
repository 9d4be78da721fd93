import type { ConfigIssue } from '../errors.js';
import { isSecretName, registerSecret } from '../util/secrets.js';

const VAR = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/**
 * Replaces `${VAR}` and `${VAR:-default}` in raw YAML text before it is parsed. A variable that
 * is unset and has no default is reported with its line (and left empty so parsing continues).
 */
export function interpolateEnv(text: string, file: string, env: NodeJS.ProcessEnv, issues: ConfigIssue[]): string {
  const lines = text.split('\n');
  return lines
    .map((line, idx) => {
      if (line.trimStart().startsWith('#')) return line;
      return line.replace(VAR, (_m, name: string, def: string | undefined) => {
        const v = env[name];
        // The value of a secret-looking variable is masked wherever sluice prints it.
        if (v !== undefined && v !== '' && isSecretName(name)) registerSecret(v);
        if (v !== undefined && v !== '') return v;
        if (def !== undefined) return def;
        issues.push({
          file,
          line: idx + 1,
          message: `environment variable ${name} is not set (use \${${name}:-default} to give a default)`,
        });
        return '';
      });
    })
    .join('\n');
}
