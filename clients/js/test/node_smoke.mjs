// Run by tests/integration/test_js_client_node.py: the client under Node (>= 20; on 20
// with --experimental-websocket) against a real gateway. Prints one JSON line.
import { WsPrism } from "../wsprism.js";

const [url, tenant] = process.argv.slice(2);
const seen = { messages: [], hot: [], states: [], errors: [] };
const c = new WsPrism({ url, tenant, ticket: "dev:node", timeout: 3000 });
c.on("message", (m) => seen.messages.push(m.data));
c.on("hot", (f) => seen.hot.push([f.svc, f.op, f.flags, f.seq, [...f.payload]]));
c.on("state", (s) => seen.states.push(s));
c.on("error", (e) => seen.errors.push(e.code));
const out = { authed: await c.connect() };
out.joined = await c.join("node-room");
out.sent = await c.send("node-room", "from node").then(() => "acked");
out.presence = await c.presence("node-room");
out.notAllowed = await c.request("nope", "x").catch((e) => e.code);
await c.sendHot(1, 9, new Uint8Array([4, 2]), { ack: true });
await new Promise((r) => setTimeout(r, 100));
c.close();
console.log(JSON.stringify({ ...out, ...seen, state: c.state }));
