// Server names as the shared-consumer check compares them (ConsumerIdentity.servers).

/** `localhost` and 127.0.0.1 are one server. */
export function loopback(server: string): string {
  return server.replace(/^localhost(?=:|$)/, '127.0.0.1');
}

/** host:port of each server of a list or comma-separated string, without scheme or credentials. */
export function serverList(v: string | readonly string[]): string[] {
  return (typeof v === 'string' ? v.split(',') : v)
    .map((x) =>
      x
        .trim()
        .toLowerCase()
        .replace(/^[a-z][a-z0-9+.-]*:\/\//, '')
        .replace(/^[^@/]*@/, '')
        .replace(/\/+$/, ''),
    )
    .filter(Boolean)
    .map(loopback);
}
