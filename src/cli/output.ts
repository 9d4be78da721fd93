import { maskText } from '../util/secrets.js';

// Everything a command prints goes through the secret masker (passwords, tokens, URL userinfo).
export const out = (s: string) => process.stdout.write(maskText(s.endsWith('\n') ? s : s + '\n'));
export const err = (s: string) => process.stderr.write(maskText(s.endsWith('\n') ? s : s + '\n'));
