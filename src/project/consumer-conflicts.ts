import type { ConfigIssue } from '../errors.js';
import type { ConsumerIdentity } from '../connectors/registry.js';
import type { NamedSource } from './project-types.js';

/**
 * Sources of the project that would share a consumer on their broker (Kafka group, NATS durable
 * consumer, Redis consumer group, RabbitMQ queue): one issue per shared identity, at the second source's line,
 * naming every source that shares it. Such a project is broken whether its sources run in one
 * process or one process each.
 */
export function consumerConflicts(sources: NamedSource[]): ConfigIssue[] {
  const groups: { identity: ConsumerIdentity; spec: NamedSource['spec']; sources: NamedSource[] }[] = [];
  for (const s of sources) {
    const identity = s.spec.identity?.(s.cfg);
    if (!identity) continue;
    const shared = groups.find((g) => g.spec === s.spec && g.identity.key === identity.key && g.identity.servers.some((x) => identity.servers.includes(x)));
    if (shared) shared.sources.push(s);
    else groups.push({ identity, spec: s.spec, sources: [s] });
  }
  const at = (s: NamedSource) => `${s.name} (${s.file}${s.line !== undefined ? `:${s.line}` : ''})`;
  return groups
    .filter((g) => g.sources.length > 1)
    .map(({ identity, sources: shared }) => {
      const second = shared[1];
      const names = `${shared.slice(0, -1).map(at).join(', ')} and ${at(shared[shared.length - 1])}`;
      return {
        file: second.file,
        line: second.line,
        key: `sources.${second.name}.${identity.setting}`,
        message: `sources ${names} ${identity.problem}; give each source its own \`${identity.setting}:\``,
      };
    });
}
