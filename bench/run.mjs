// `npm run bench [-- <name> [flags]]`: runs one benchmark (default: file).
const benches = {
  file: './file.mjs',
  rabbitmq: './rabbitmq.mjs',
};
const name = process.argv[2] && !process.argv[2].startsWith('--') ? process.argv[2] : 'file';
if (!benches[name]) {
  console.error(`unknown benchmark "${name}"; available: ${Object.keys(benches).join(', ')}`);
  process.exit(2);
}
await import(benches[name]);
