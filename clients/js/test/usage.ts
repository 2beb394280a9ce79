// Compiled by `bash scripts/js_check.sh types` (tsc --strict --noEmit): the uses that
// docs/client.md shows must type-check against wsprism.d.ts, and misuses must not.
import { WsPrism, WsPrismError, encodeHot, decodeHot, HOT_SEQ, type HotFrame, type State } from "../wsprism.js";

const c = new WsPrism({ url: "ws://localhost:8080/v1/ws", tenant: "acme", ticket: "dev:alice" });
const d = new WsPrism({ tenant: "acme", getTicket: async () => "token", sid: false, minDelay: 250 });

c.on("message", (m) => { const text: string = m.data.msg; void text; void m.offset; });
c.on("presence", (e) => { const who: string = e.user; void who; void e.type; });
c.on("hot", (f: HotFrame) => { const first: number | undefined = f.payload[0]; void first; });
c.on("state", (s: State, info) => { void s; void info.delay; void info.reason; void info.closeCode; });
c.on("error", (e) => { if (e.code === "REFUSED" && e.reason === "auth_failed") d.close(); });
c.on("joined", (j) => { if (j.rejoin && j.recovered === false) void j.room; });
const off = c.on("authed", (a) => { const u: string = a.user; void u; });
off();

async function main(): Promise<void> {
  const authed = await c.connect();
  void authed.sid;
  const j = await c.join("lobby", { since: { offset: 17, epoch: "e" } });
  void j.recovered;
  await c.send("lobby", "hi");
  const p = await c.presence("lobby");
  const n: number = p.count;
  void n;
  const reply: unknown = await c.request("match", "move", { x: 1 }, { room: "lobby", timeout: 5000 });
  void reply;
  const sent: boolean = c.sendHot(1, 2, new Uint8Array([1, 2]));
  void sent;
  await c.sendHot(1, 2, "text", { ack: true });
  const frame = decodeHot(encodeHot(1, 2, new Uint8Array(0), HOT_SEQ, 7));
  if (frame) void frame.seq;
  try {
    await c.leave("lobby");
  } catch (e) {
    if (e instanceof WsPrismError) void e.code;
  }
  void c.position("lobby")?.offset;
  void c.rooms.size;
  // @ts-expect-error: tenant is required
  new WsPrism({ ticket: "x" });
  // @ts-expect-error: no such event
  c.on("nope", () => {});
  // @ts-expect-error: a promise with ack, a boolean without
  const wrong: Promise<void> = c.sendHot(1, 2, undefined, { ack: false });
  void wrong;
  c.close();
}
void main;
