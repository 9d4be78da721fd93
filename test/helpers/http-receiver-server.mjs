// A real HTTP server for the http sink tests, in its own process: the tests run the CLI with
// spawnSync, which blocks their event loop, so the receiver cannot live in the test process.
// It records every request and answers as told; /_ctl/ is its control API:
//   POST /_ctl/behaviour {path, script: [{status, headers?, body?, delay_ms?}, ...], otherwise?: {...}}
//     request n on `path` gets script[n-1], later ones `otherwise` (default 200);
//   GET /_ctl/requests?path=P  every request to P so far (method, path, headers, body, status, at).
import http from 'node:http';

const requests = [];
const behaviours = new Map();
const counts = new Map();

function answer(res, status, headers, body) {
  res.writeHead(status, { 'content-type': 'text/plain', ...headers });
  res.end(body ?? '');
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const url = new URL(req.url ?? '/', 'http://x');
    const body = Buffer.concat(chunks).toString('utf8');
    if (url.pathname === '/_ctl/behaviour') {
      const b = JSON.parse(body);
      behaviours.set(b.path, b);
      counts.set(b.path, 0);
      return answer(res, 204, {});
    }
    if (url.pathname === '/_ctl/requests') {
      const p = url.searchParams.get('path');
      return answer(res, 200, { 'content-type': 'application/json' }, JSON.stringify(requests.filter((r) => r.path === p)));
    }
    const n = (counts.get(url.pathname) ?? 0) + 1;
    counts.set(url.pathname, n);
    const b = behaviours.get(url.pathname);
    const a = b?.script?.[n - 1] ?? b?.otherwise ?? { status: 200 };
    requests.push({ method: req.method, path: url.pathname, headers: req.headers, body, status: a.status, at: Date.now() });
    if (a.delay_ms) setTimeout(() => answer(res, a.status, a.headers ?? {}, a.body), a.delay_ms);
    else answer(res, a.status, a.headers ?? {}, a.body);
  });
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
