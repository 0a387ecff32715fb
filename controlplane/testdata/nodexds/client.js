// A Node.js gRPC client that resolves its target through xDS
// (@grpc/grpc-js-xds, bootstrap from GRPC_XDS_BOOTSTRAP), for mesh's
// controlplane tests (TestNodeGRPCXDSClient).
//
// Usage: node client.js xds:///service
// Each line read from stdin is a number N: the client makes N unary calls
// to grpc.health.v1.Health/Check, one after the other, each with a 2 s
// deadline, and writes one JSON line:
//   {"ok": 3, "who": {"a": 2, "b": 1}, "errors": ["14 UNAVAILABLE: ..."]}
// where "who" counts the `who` response header each answering server sets.
'use strict';

const grpc = require('@grpc/grpc-js');
const xds = require('@grpc/grpc-js-xds');
const readline = require('readline');

xds.register();

const target = process.argv[2];
if (!target) {
  process.stderr.write('usage: node client.js xds:///service\n');
  process.exit(2);
}

// HealthCheckRequest{service: ""} encodes to no bytes; the response is
// not needed beyond its arrival, so it is kept raw.
const Health = grpc.makeGenericClientConstructor({
  Check: {
    path: '/grpc.health.v1.Health/Check',
    requestStream: false,
    responseStream: false,
    requestSerialize: () => Buffer.alloc(0),
    requestDeserialize: (b) => b,
    responseSerialize: (b) => b,
    responseDeserialize: (b) => b,
  },
}, 'Health');
const client = new Health(target, grpc.credentials.createInsecure());

function call() {
  return new Promise((resolve) => {
    let who = '';
    const deadline = new Date(Date.now() + 2000);
    const c = client.Check({}, new grpc.Metadata(), { deadline }, (err) => {
      resolve(err ? { err: `${err.code} ${err.message}` } : { who });
    });
    c.on('metadata', (md) => {
      const v = md.get('who');
      if (v.length > 0) who = String(v[0]);
    });
  });
}

async function batch(n) {
  const out = { ok: 0, who: {}, errors: [] };
  for (let i = 0; i < n; i++) {
    const r = await call();
    if (r.err !== undefined) {
      out.errors.push(r.err);
      continue;
    }
    out.ok++;
    out.who[r.who] = (out.who[r.who] || 0) + 1;
  }
  return out;
}

// Lines are handled one at a time, in order.
let queue = Promise.resolve();
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const n = parseInt(line, 10);
  if (!(n > 0)) return;
  queue = queue.then(async () => {
    process.stdout.write(JSON.stringify(await batch(n)) + '\n');
  });
}).on('close', () => {
  queue.then(() => {
    client.close();
    process.exit(0);
  });
});
