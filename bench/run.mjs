// `npm run bench [-- <name> [flags]]`: runs one benchmark (default: file).
//
//   npm run bench                                   # file, 500,000 messages, 3 runs
//   npm run bench -- file --messages 50000 --runs 1
//   npm run bench -- rabbitmq                       # needs a RabbitMQ broker (see bench/README.md)
//   npm run bench -- kafka | nats | redis_streams   # need the broker (see bench/README.md)
//   npm run bench -- service_sinks                  # http, redis, rabbitmq, nats sinks vs bare clients
//   npm run bench -- hostile_neighbour              # a source fed hostile input beside a normal one (file sources)
//   npm run bench -- windows                        # windowed models against plain DuckDB's GROUP BY over the same file
//   npm run bench -- windows_soak                   # 5M events through windowed models: RSS and state over time
//   npm run bench -- windows_store                  # windows over Kafka with window_state (PostgreSQL) against without
//   npm run bench -- executor                       # a handler's subprocess pool against xargs -P; a no-op handler against a SQL model
//   npm run bench -- joins [--soak]                 # a stream join against plain DuckDB's join over the same file (--soak: RSS and buffers over time)
const benches = {
  file: './file.mjs',
  rabbitmq: './rabbitmq.mjs',
  kafka: './kafka.mjs',
  nats: './nats.mjs',
  redis_streams: './redis-streams.mjs',
  postgres: './postgres.mjs',
  service_sinks: './service-sinks.mjs',
  hostile_neighbour: './hostile-neighbour.mjs',
  windows: './windows.mjs',
  windows_soak: './windows-soak.mjs',
  windows_store: './windows-store.mjs',
  joins: './joins.mjs',
  executor: './executor.mjs',
};
const name = process.argv[2] && !process.argv[2].startsWith('--') ? process.argv[2] : 'file';
if (!benches[name]) {
  console.error(`unknown benchmark "${name}"; available: ${Object.keys(benches).join(', ')}`);
  process.exit(2);
}
try {
  await import(benches[name]);
} catch (err) {
  if (err?.code === 'ERR_MODULE_NOT_FOUND' && String(err.url ?? '').endsWith(benches[name].slice(1))) {
    console.error(`benchmark "${name}" is registered but ${benches[name]} does not exist yet`);
    process.exit(2);
  }
  throw err;
}
