// Test-only HTTP app for the network-namespace tests (tests/capture.rs, tests/two_pods.rs): a
// plain HTTP/1.1 server on every HOST:PORT given (`node echo.mjs 10.0.0.2:8080 [fd00::2]:8080
// 0.0.0.0:8081 ...`), run inside a namespace, directly or behind an AuthBridge's inbound
// redirect. Every request is answered with JSON describing what arrived:
//   {"method","path","host","authorization","identity","headers","listener","remote"}
// `identity` holds the x-authbridge-* headers (set by an inbound AuthBridge), `headers` all
// request headers, `listener` the HOST:PORT argument that accepted the connection and `remote`
// the peer address. Prints one line `{"ready":true}` on stdout once all listeners are up and
// exits when stdin closes (so it never outlives the test).
import http from 'node:http';

const specs = process.argv.slice(2);
if (specs.length === 0) {
  console.error('usage: node echo.mjs HOST:PORT...');
  process.exit(2);
}

function parse(spec) {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(spec) || /^([^:]+):(\d+)$/.exec(spec);
  if (!m) throw new Error(`bad listen address ${spec}`);
  return { host: m[1], port: Number(m[2]) };
}

let pending = specs.length;
for (const spec of specs) {
  const { host, port } = parse(spec);
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const identity = {};
      for (const [k, v] of Object.entries(req.headers)) {
        if (k.startsWith('x-authbridge-')) identity[k] = v;
      }
      const body = JSON.stringify({
        method: req.method,
        path: req.url,
        host: req.headers.host ?? null,
        authorization: req.headers.authorization ?? null,
        identity,
        headers: req.headers,
        listener: spec,
        remote: req.socket.remoteAddress,
      });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  server.on('error', (e) => {
    console.error(`echo: ${spec}: ${e.message}`);
    process.exit(1);
  });
  server.listen({ host, port, ipv6Only: host.includes(':') }, () => {
    pending -= 1;
    if (pending === 0) console.log(JSON.stringify({ ready: true }));
  });
}

process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
process.stdin.resume();
