// wsPrism client (SPEC 16): one ES module, no dependencies, no build step.
// Browsers and Node >= 20 (Node 20: pass `WebSocket` from the `ws` package, or run
// with --experimental-websocket). Types: wsprism.d.ts. Guide: docs/client.md.

const ACK_REQUESTED = 4;           // Ext Lane flag
export const HOT_SEQ = 1, HOT_ACK = 2, HOT_IS_ACK = 4;   // Hot Lane flags

// Close codes after which reconnecting cannot help (docs/client.md, "Close codes").
const STOP = [1000, 1002, 1007, 1008, 1009, 4000, 4003, 4004, 4006, 4007];
// Refusals that no retry heals; `auth_failed` joins them when the ticket is fixed.
const FINAL = ["unknown_tenant", "bad_request"];

export class WsPrismError extends Error {
  constructor(code, msg, extra) {
    super(msg || code);
    this.name = "WsPrismError";
    this.code = code;
    Object.assign(this, extra);
  }
}

const bytes = (p) =>
  p == null ? new Uint8Array(0)
  : typeof p == "string" ? new TextEncoder().encode(p)
  : p instanceof ArrayBuffer ? new Uint8Array(p)
  : new Uint8Array(p.buffer, p.byteOffset, p.byteLength);

/** Hot Lane frame: [svc u8][op u8][flags u8][seq u32 LE if flags & 1][payload]. */
export function encodeHot(svc, op, payload, flags = 0, seq = 0) {
  const body = bytes(payload), head = flags & HOT_SEQ ? 7 : 3;
  const out = new Uint8Array(head + body.length);
  out[0] = svc; out[1] = op; out[2] = flags;
  if (head == 7) new DataView(out.buffer).setUint32(3, seq >>> 0, true);
  out.set(body, head);
  return out;
}

/** The frame's parts, or null when it is shorter than its header. */
export function decodeHot(buf) {
  const b = bytes(buf), flags = b[2], head = flags & HOT_SEQ ? 7 : 3;
  if (b.length < head) return null;
  return {
    svc: b[0], op: b[1], flags,
    seq: head == 7 ? new DataView(b.buffer, b.byteOffset).getUint32(3, true) : undefined,
    payload: b.subarray(head),
  };
}

const g = globalThis;
const rand = () => Array.from(g.crypto.getRandomValues(new Uint8Array(12)), (x) => x.toString(16).padStart(2, "0")).join("");
const SID_KEY = "wsprism.sid";

// One sid per tab, kept in sessionStorage so a reload keeps it. A duplicated tab gets a
// copy of sessionStorage, "live" mark included, while its original still runs: seeing the
// mark, it takes a new sid instead of replacing its twin's session (4003) in a loop.
function tabSid() {
  try {
    const s = g.sessionStorage;
    let sid = s.getItem(SID_KEY);
    if (!sid || s.getItem(SID_KEY + ".live")) s.setItem(SID_KEY, (sid = rand()));
    const live = () => s.setItem(SID_KEY + ".live", "1");
    live();
    g.addEventListener("pageshow", live);
    g.addEventListener("pagehide", () => s.removeItem(SID_KEY + ".live"));
    return sid;
  } catch {
    return rand();   // Node, or storage disabled: one sid for this client's life
  }
}

export class WsPrism {
  constructor(o = {}) {
    this.o = o = {
      url: g.location && `${location.protocol == "https:" ? "wss" : "ws"}://${location.host}/v1/ws`,
      timeout: 5000, pingInterval: 20000, minDelay: 500, maxDelay: 20000, ...o,
    };
    this.sid = o.sid === false ? undefined : o.sid || tabSid();
    this.state = "closed";
    this.rooms = new Map();   // room -> {offset, epoch} (offset/epoch only with history)
    this._h = {};             // event -> listeners
    this._p = new Map();      // seq (or hot ack key) -> pending request
    this._seq = 0;
    this._hotSeq = 0;
    this._n = 0;              // failed attempts since the last `authed`
    this._wake = () => this.state == "reconnecting" ? this._retryNow()
      : this.state == "open" && !(g.document && document.hidden) && this._probe();
  }

  on(ev, fn) { (this._h[ev] ||= new Set()).add(fn); return () => this.off(ev, fn); }
  off(ev, fn) { this._h[ev]?.delete(fn); }
  _emit(ev, ...a) {
    for (const fn of this._h[ev] || []) {
      try { fn(...a); } catch (e) { setTimeout(() => { throw e; }); }   // a listener's bug is not ours
    }
  }
  _error(code, msg, extra) { const e = new WsPrismError(code, msg, extra); this.lastError = e; this._emit("error", e); return e; }
  _state(s, info) { this.state = s; this._emit("state", s, info || {}); }

  /** Resolves on the next `authed`; rejects with the error that ends the attempt
   *  before it (the client may still retry: see `state`). */
  connect() {
    if (this.state == "open") return Promise.resolve(this.authed);
    if (!this._first) this._ready = new Promise((res, rej) => (this._first = { res, rej }));
    if (this.state == "closed") {
      this._stopped = false;
      this._n = 0;
      g.addEventListener?.("online", this._wake);
      g.document?.addEventListener("visibilitychange", this._wake);
      this._state("connecting");
      this._open();
    }
    return this._ready;
  }

  close() {
    this._stopped = true;
    g.removeEventListener?.("online", this._wake);
    g.document?.removeEventListener("visibilitychange", this._wake);
    if (this.ws) this.ws.close(1000);
    this._down();
    this._settleFirst(new WsPrismError("CLOSED", "closed by the client"));
    if (this.state != "closed") this._state("closed", { closeCode: 1000 });
  }

  async _open() {
    const o = this.o, gen = (this._gen = (this._gen || 0) + 1);
    let ticket = o.ticket;
    try {
      if (o.getTicket) ticket = await o.getTicket();
    } catch (e) {
      return this._failed({ code: "TICKET", msg: "getTicket failed: " + e }, gen);
    }
    if (gen != this._gen || this._stopped) return;
    let url, ws;
    try {
      url = new URL(o.url);
      const q = url.searchParams;
      q.set("tenant", o.tenant);
      q.set("ticket", ticket);
      if (this.sid) q.set("sid", this.sid);
      ws = this.ws = new (o.WebSocket || g.WebSocket)(url);
    } catch (e) {
      return this._failed({ code: "REFUSED", reason: "bad_request", msg: "bad url: " + e.message }, gen);
    }
    ws.binaryType = "arraybuffer";
    let opened = false;
    ws.onopen = () => { opened = true; this._rx = Date.now(); };
    ws.onmessage = (e) => {
      this._rx = Date.now();
      typeof e.data == "string" ? this._text(e.data) : this._hot(e.data);
    };
    ws.onerror = () => {};    // a close always follows (and Node's `ws` throws on an unheard error)
    ws.onclose = (e) => {
      if (gen != this._gen) return;
      this._down();
      if (this._stopped) return;
      if (opened) this._closed(e.code, e.reason);
      else this._refused(url);
    };
  }

  // Tear the socket down: timers off, pending requests rejected (never resent).
  _down() {
    this._gen++;
    clearInterval(this._tick);
    clearTimeout(this._probeT);
    this._probing = 0;
    clearTimeout(this._retryT);
    const ws = this.ws;
    if (ws) ws.onopen = ws.onmessage = ws.onclose = null;   // (onerror stays: a late error is ignored)
    this.ws = null;
    const err = new WsPrismError("DISCONNECTED", "connection lost before the answer");
    for (const p of this._p.values()) p.done(err);
    this._p.clear();
  }

  // The handshake failed: page code only sees close 1006, so ask the gateway why
  // (GET <url>/check: the same checks as the upgrade, answered in JSON; docs/protocol.md).
  async _refused(url) {
    const gen = this._gen, check = new URL(url);
    check.protocol = url.protocol == "wss:" ? "https:" : "http:";
    check.pathname += "/check";
    let v;
    try {
      const r = await fetch(check, { cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" });
      v = await r.json();
    } catch {
      v = { reason: "unreachable", msg: "gateway unreachable" };
    }
    if (gen != this._gen || this._stopped) return;
    if (v.reason == "ok") v = { reason: "handshake_failed", msg: "the handshake failed; the gateway would accept it now" };
    this._failed({ code: v.reason == "unreachable" ? "UNREACHABLE" : "REFUSED", ...v }, gen);
  }

  _failed(v, gen) {
    if (gen != this._gen || this._stopped) return;
    const reason = v.reason, final = FINAL.includes(reason) || (reason == "auth_failed" && !this.o.getTicket);
    const err = this._error(v.code, v.msg || reason, { reason, retryAfter: v.retry_after });
    this._settleFirst(err);
    if (final) return this._state("closed", { reason });
    // Nobody listening (a restart, say) costs the gateway nothing per try: those tries
    // stop growing at 0.5-2.5 s, so a restarted gateway sees its clients back within
    // seconds. Every answer from the gateway (refusal, close) backs off up to maxDelay.
    this._retry({ reason }, (v.retry_after || 0) * 1000, reason == "draining", reason == "unreachable" ? 2 : 30);
  }

  _closed(code, why) {
    const info = { closeCode: code, reason: this._kicked || why }, stop = STOP.includes(code) || code > 4007;
    const msg = `closed by the gateway (${code}${info.reason ? " " + info.reason : ""})`;
    this._kicked = undefined;
    this._settleFirst(stop ? this._error("CLOSED", msg, info) : new WsPrismError("CLOSED", msg, info));
    if (stop) return this._state("closed", info);
    this._retry(info, code == 4005 ? 2000 : 0, code == 1001);
  }

  // Full-jitter backoff: min + random(0, min(max, min * 2^n)), at most max; n counts the
  // failed tries since the last `authed` (one more for a draining gateway's spread).
  _retry(info, atLeast, spread, maxStep = 30) {
    const o = this.o, n = Math.min(this._n++ + (spread ? 1 : 0), maxStep);
    let d = Math.min(o.maxDelay, o.minDelay + Math.random() * Math.min(o.maxDelay, o.minDelay * 2 ** n));
    d = Math.max(d, atLeast);
    this._state("reconnecting", { ...info, delay: d });
    this._retryT = setTimeout(() => this._open(), d);
  }

  _retryNow() {
    if (this.ws) return;      // a try is under way
    clearTimeout(this._retryT);
    this._n = 0;
    this._open();
  }

  _settleFirst(err) {
    const f = this._first;
    this._first = null;
    if (f) err ? f.rej(err) : f.res(this.authed);
  }

  // App-level liveness (browsers hide WebSocket pings): after pingInterval without any
  // frame, send sys:ping; nothing within `timeout` after it means the link is dead.
  _probe() {
    if (this._probing) return;
    const sent = (this._probing = Date.now());
    this._raw({ svc: "sys", type: "ping" });
    this._probeT = setTimeout(() => {
      this._probing = 0;
      if (this._rx < sent && this.ws) {
        this.ws.close();
        this._down();
        this._closed(1006, "no answer to sys:ping");
      }
    }, this.o.timeout);
  }

  _authed(d) {
    this.authed = d;
    this.user = d.user;
    this.sid = d.sid;
    this._n = 0;
    this._tick = setInterval(() => Date.now() - this._rx >= this.o.pingInterval && this._probe(), this.o.pingInterval / 2);
    const rejoin = [...this.rooms.keys()];
    this._state("open");
    this._settleFirst();
    this._emit("authed", d);
    for (const room of rejoin) {
      this._join(room, this.rooms.get(room), true).catch((e) => {
        if (e.code == "DISCONNECTED") return;   // still ours: re-joined on the next `authed`
        this.rooms.delete(room);
        this._error(e.code, `could not re-join ${room}: ${e.message}`, { room });
      });
    }
  }

  _text(raw) {
    let m;
    try {
      m = JSON.parse(raw);
    } catch {}
    if (!m || typeof m != "object" || typeof m.svc != "string" || typeof m.type != "string") {
      return this._error("MALFORMED", "not a wsPrism envelope: " + String(raw).slice(0, 80));
    }
    const d = m.data || {}, t = m.type;
    if (m.svc == "sys") {
      if (t == "authed") return this._authed(d);
      if (t == "ack") return this._settle(m.seq);
      if (t == "error") {
        const e = new WsPrismError(d.code, d.msg, { seq: m.seq, traceId: m.trace_id });
        if (this._settle(m.seq, e)) return;
        this.lastError = e;
        return this._emit("error", e);
      }
      if (t == "joined") {
        const r = this.rooms.get(m.room) || {};
        if (d.epoch != null) r.offset = d.offset, r.epoch = d.epoch;
        this.rooms.set(m.room, r);
        return this._settleBy("join", m.room, d);
      }
      if (t == "left") {
        this.rooms.delete(m.room);
        return this._settleBy("leave", m.room);
      }
      if (t == "presence") return this._settleBy("presence", m.room, d);
      if (t == "refreshed") return this._settleBy("refresh", undefined, d);
      if (t == "kicked") return (this._kicked = d.reason);
      if (t == "pong") return;
    } else if (m.svc == "room") {
      if (t == "user_joined" || t == "user_left") return this._emit("presence", { type: t, room: m.room, user: d.user });
    } else if (t == "reply" && this._p.has(m.seq)) {
      return this._settle(m.seq, undefined, d);
    } else {
      // History (SPEC 13): keep each room's position; drop what a replay repeats.
      const r = m.room != null && this.rooms.get(m.room);
      if (r && typeof m.offset == "number") {
        if (r.epoch == m.epoch && m.offset <= r.offset) return;
        r.offset = m.offset;
        r.epoch = m.epoch;
      }
      return this._emit("message", m);
    }
    this._error("UNKNOWN_TYPE", `unknown message ${m.svc}:${t}`);
  }

  _hot(buf) {
    const f = decodeHot(buf);
    if (!f) return this._error("BAD_FRAME", `binary frame of ${buf.byteLength} bytes, shorter than its header`);
    if (f.flags & HOT_IS_ACK) return this._settle(`h${f.svc}.${f.op}.${f.seq}`);
    this._emit("hot", f);
  }

  // -- requests ------------------------------------------------------------------------
  _raw(env) {
    if (this.state != "open") return false;
    this.ws.send(JSON.stringify({ v: 1, ...env }));
    return true;
  }

  // Send one envelope with a fresh seq; the promise settles on its answer, its sys.error,
  // its timeout or the connection's loss, and the message is never sent again.
  _req(kind, env, opts = {}) {
    return new Promise((res, rej) => {
      const seq = ++this._seq;
      if (!this._raw({ ...env, seq })) return rej(new WsPrismError("DISCONNECTED", "not connected"));
      this._wait(seq, kind, env.room, opts.timeout, res, rej);
    });
  }

  _wait(key, kind, room, timeout, res, rej) {
    const t = setTimeout(() => p.done(new WsPrismError("TIMEOUT", `no answer within ${timeout || this.o.timeout} ms`)), timeout || this.o.timeout);
    const p = { kind, room, done: (err, v) => { clearTimeout(t); this._p.delete(key); err ? rej(err) : res(v); } };
    this._p.set(key, p);
  }

  _settle(key, err, v) {
    const p = this._p.get(key);
    if (p) p.done(err, v);
    return !!p;
  }

  _settleBy(kind, room, v) {
    for (const p of this._p.values()) if (p.kind == kind && p.room === room) return p.done(null, v);
  }

  _join(room, since, rejoin) {
    const data = since && since.epoch != null ? { since: { offset: since.offset, epoch: since.epoch } } : undefined;
    return this._req("join", { svc: "room", type: "join", room, data }).then((d) => {
      const j = { room, rejoin: !!rejoin };
      for (const k of ["recovered", "offset", "epoch"]) if (d[k] !== undefined) j[k] = d[k];
      this._emit("joined", j);
      return j;
    });
  }

  join(room, opts = {}) { return this._join(room, opts.since); }
  leave(room) {
    // not connected: forget the room, so the next connection does not re-join it
    if (this.state != "open" && this.rooms.delete(room)) return Promise.resolve();
    return this._req("leave", { svc: "room", type: "leave", room });
  }
  presence(room) { return this._req("presence", { svc: "room", type: "presence", room }); }
  refresh(ticket) { return this._req("refresh", { svc: "sys", type: "refresh", data: { ticket } }); }

  send(room, msg, opts) {
    return this._req("send", { svc: "chat", type: "send", flags: ACK_REQUESTED, room, data: { msg } }, opts);
  }

  request(svc, type, data, opts = {}) {
    return this._req("request", { svc, type, flags: ACK_REQUESTED, room: opts.room, data }, opts);
  }

  sendHot(svc, op, payload, opts = {}) {
    const ack = opts.ack, seq = ack ? (this._hotSeq = (this._hotSeq + 1) >>> 0) : opts.seq;
    const flags = (seq != null ? HOT_SEQ : 0) | (ack ? HOT_ACK : 0);
    const open = this.state == "open";
    if (open) this.ws.send(encodeHot(svc, op, payload, flags, seq));
    if (!ack) return open;
    return new Promise((res, rej) => {
      if (!open) return rej(new WsPrismError("DISCONNECTED", "not connected"));
      this._wait(`h${svc}.${op}.${seq}`, "hot", undefined, opts.timeout, res, rej);
    });
  }

  position(room) { return this.rooms.get(room); }
}
