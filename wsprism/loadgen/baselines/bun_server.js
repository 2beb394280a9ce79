// The bare server written for Bun (`Bun.serve`, built on uWebSockets): the fastest
// server a user could pick instead of the gateway, as a baseline beside picows_server.py.
//
// Behaviour matches picows_server.py: a fixed `authed` after the upgrade, fixed `pong`
// and `joined` replies, every other message (text or binary) sent as is to every open
// connection (uWebSockets' pub/sub: one topic all sockets subscribe to, the sender
// included). Compression is off; a socket over 1 MiB of unsent data is skipped by
// publish, as the gateway's lossy lane skips it; close frames are answered by Bun.
//
//     bun wsprism/loadgen/baselines/bun_server.js --port 9003
const args = process.argv.slice(2);
let port = 0;
let host = "127.0.0.1";
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--port") port = Number(args[++i]);
  else if (args[i] === "--host") host = args[++i];
}
if (!port) {
  console.error("usage: bun bun_server.js --port PORT [--host HOST]");
  process.exit(2);
}

const AUTHED = '{"v":1,"svc":"sys","type":"authed","data":{"tenant":"bench","user":"bench","sid":"s"}}';
const PONG = '{"v":1,"svc":"sys","type":"pong"}';
const JOINED = '{"v":1,"svc":"sys","type":"joined","room":"bench"}';
const PING_HEAD = '{"v":1,"svc":"sys","type":"ping"';
const JOIN_HEAD = '{"v":1,"svc":"room","type":"join"';
const TOPIC = "all";

const server = Bun.serve({
  hostname: host,
  port,
  fetch(req, srv) {
    if (srv.upgrade(req)) return undefined;
    return new Response("upgrade required", { status: 426 });
  },
  websocket: {
    perMessageDeflate: false,
    maxPayloadLength: 1 << 20,
    backpressureLimit: 1 << 20,
    closeOnBackpressureLimit: false,
    idleTimeout: 0,
    sendPings: false,
    open(ws) {
      ws.subscribe(TOPIC);
      ws.send(AUTHED);
    },
    message(ws, msg) {
      if (typeof msg === "string") {
        if (msg.startsWith(PING_HEAD)) { ws.send(PONG); return; }
        if (msg.startsWith(JOIN_HEAD)) { ws.send(JOINED); return; }
      }
      server.publish(TOPIC, msg);
    },
  },
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => { server.stop(true); process.exit(0); });
}
console.log(`bun baseline listening on ${host}:${server.port}`);
