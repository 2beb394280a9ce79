// The wsPrism admin page: one ES module, no dependencies, no build step.
//
// Data comes from GET /v1/admin/state on this same listener, every REFRESH_MS, with the
// tenant's server-API key as `Authorization: Bearer <key>`. A page load cannot carry that
// header, so the page itself holds no data and needs no key; it asks for the key, keeps it
// in sessionStorage (this tab only) and sends it with each fetch. Nothing is sent by the
// browser on its own (no cookie), so another site cannot make this page act (no CSRF), and
// without CORS headers on the API it cannot read the answers either.
// Everything shown is set with textContent: no client-chosen text becomes markup.

const REFRESH_MS = 2000;
// relative to /admin/, so the page also works behind a proxy that mounts the API under a prefix
const STATE_URL = "../v1/admin/state";
const DISCONNECT_URL = "../v1/disconnect";
const PAGE = 50;
const KEY_ITEM = "wsprism.admin.key";

const $ = (id) => document.getElementById(id);
const view = { q: "", offset: 0, tenant: null, timer: null, busy: false, last: null };

function key() {
  return sessionStorage.getItem(KEY_ITEM);
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${key()}` }, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = { error: `HTTP ${resp.status}` };
  }
  return { status: resp.status, data };
}

function signIn(k) {
  sessionStorage.setItem(KEY_ITEM, k);
  $("login-error").textContent = "";
  view.offset = 0;
  refresh();
}

function signOut(reason) {
  sessionStorage.removeItem(KEY_ITEM);
  clearTimeout(view.timer);
  view.timer = null;
  view.last = null;
  $("dash").hidden = true;
  clearData();
  $("login").hidden = false;
  $("signout").hidden = true;
  $("tenant").hidden = true;
  $("status").textContent = "";
  $("login-error").textContent = reason || "";
  $("key").value = "";
  $("key").focus();
}

function clearData() {
  for (const id of ["n-sessions", "n-users", "n-rooms", "rate-ext", "rate-hot"]) $(id).textContent = "–";
  for (const id of ["p-version", "p-compiled", "p-uptime", "p-state", "p-scale", "rej-window", "search-count", "page"]) {
    $(id).textContent = "";
  }
  for (const id of ["rooms", "rejections", "delivery", "sessions"]) $(id).tBodies[0].replaceChildren();
}

async function refresh() {
  clearTimeout(view.timer);
  if (!key()) return;
  if (view.busy) {
    view.timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  view.busy = true;
  const params = new URLSearchParams({ offset: String(view.offset), limit: String(PAGE) });
  if (view.q) params.set("q", view.q);
  try {
    const { status, data } = await api("GET", `${STATE_URL}?${params}`);
    if (status === 401 || status === 403) {
      signOut(`${status}: ${data.error}`);
      return;
    }
    if (status !== 200) {
      stale(`${status}: ${data.error}`);
    } else {
      render(data);
    }
  } catch (err) {
    stale(`gateway unreachable (${err.message})`);
  } finally {
    view.busy = false;
  }
  if (key()) view.timer = setTimeout(refresh, REFRESH_MS);
}

function stale(why) {
  const s = $("status");
  s.textContent = `not updated: ${why}`;
  s.classList.add("stale");
}

const fmt = new Intl.NumberFormat("en");
const num = (n) => (n === null || n === undefined ? "–" : fmt.format(n));

function uptime(s) {
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${h}h ${m}m` : h ? `${h}h ${m}m` : `${m}m ${Math.floor(s % 60)}s`;
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function rows(table, items, toCells, empty) {
  const body = $(table).tBodies[0];
  const out = items.map((item) => {
    const tr = document.createElement("tr");
    tr.append(...toCells(item));
    return tr;
  });
  if (!out.length) {
    const tr = document.createElement("tr");
    const td = cell(empty, "empty");
    td.colSpan = $(table).tHead.rows[0].cells.length;
    tr.append(td);
    out.push(tr);
  }
  body.replaceChildren(...out);
}

function render(st) {
  view.last = st;
  view.tenant = st.tenant;
  $("login").hidden = true;
  $("dash").hidden = false;
  $("signout").hidden = false;
  const t = $("tenant");
  t.hidden = false;
  t.textContent = `tenant ${st.tenant}`;
  const s = $("status");
  s.classList.remove("stale");
  s.textContent = `updated ${new Date(st.time * 1000).toLocaleTimeString()}`;

  $("n-sessions").textContent = num(st.sessions);
  $("n-users").textContent = num(st.users);
  $("n-rooms").textContent = num(st.rooms);
  $("rate-ext").textContent = num(st.lanes.ext.per_s);
  $("rate-hot").textContent = num(st.lanes.hot.per_s);

  const p = st.process;
  $("p-version").textContent = p.version;
  $("p-compiled").textContent = p.compiled ? "compiled (Cython)" : "pure-Python twins";
  $("p-uptime").textContent = uptime(p.uptime_s);
  $("p-state").textContent = p.draining ? "draining" : "serving";
  $("p-state").className = p.draining ? "warn" : "";
  $("p-scale").textContent = p.scale_out.summary;

  rows("rooms", st.top_rooms, (r) => [cell(r.room, "mono"), cell(num(r.users), "num"), cell(num(r.sessions), "num")],
    "no rooms");
  const rej = st.rejections;
  $("rej-window").textContent = rej.window_s ? `(last ${Math.round(rej.window_s)} s)` : "";
  const refusals = [
    ...rej.handshake.map((r) => ({ what: "handshake", reason: r.reason, recent: r.recent, total: r.total })),
    ...rej.policy.map((r) => ({ what: `${r.lane} ${r.decision}`, reason: r.reason, recent: r.recent, total: r.total })),
  ].sort((a, b) => b.recent - a.recent || b.total - a.total);
  rows("rejections", refusals, (r) => [cell(r.what), cell(r.reason, "mono"), cell(num(r.recent), "num"),
    cell(num(r.total), "num")], "none");
  const dl = st.delivery;
  rows("delivery", [["writer timeouts (4005)", dl.writer_timeouts], ["egress drops (lossy)", dl.egress_drops],
    ["service errors", dl.service_errors]], ([name, v]) => [cell(name), cell(num(v.recent), "num"),
    cell(num(v.total), "num")], "");

  const sr = st.search;
  $("search-count").textContent = sr.q ? `${num(sr.total)} matching "${sr.q}"` : `${num(sr.total)} sessions`;
  rows("sessions", sr.sessions, sessionCells, sr.q ? "no session matches" : "no sessions");
  const last = Math.min(sr.offset + sr.sessions.length, sr.total);
  $("page").textContent = sr.total ? `${num(sr.offset + 1)}–${num(last)} of ${num(sr.total)}` : "";
  $("prev").disabled = sr.offset === 0;
  $("next").disabled = last >= sr.total;
}

function sessionCells(s) {
  const rooms = s.rooms.join(", ") + (s.rooms_total > s.rooms.length ? ` … (${s.rooms_total} in all)` : "");
  const btn = document.createElement("button");
  btn.type = "button";
  btn.className = "danger disconnect";
  btn.textContent = "Disconnect user";
  btn.dataset.user = s.user;
  btn.addEventListener("click", () => disconnect(btn));
  const act = document.createElement("td");
  act.append(btn);
  return [cell(s.user, "mono user"), cell(s.sid, "mono sid"), cell(s.state), cell(rooms || "–", "mono"),
    cell(s.trace_id, "mono"), act];
}

// Two clicks: the first arms the button for 4 s, the second calls POST /v1/disconnect.
async function disconnect(btn) {
  if (!btn.classList.contains("armed")) {
    btn.classList.add("armed");
    btn.textContent = `Confirm: disconnect ${btn.dataset.user}`;
    clearTimeout(view.timer);                // no re-render under the operator's cursor
    view.timer = setTimeout(refresh, 4000);
    return;
  }
  btn.disabled = true;
  const user = btn.dataset.user;
  const out = $("action");
  try {
    const { status, data } = await api("POST", DISCONNECT_URL, { tenant: view.tenant, user });
    if (status === 401 || status === 403) {
      signOut(`${status}: ${data.error}`);
      return;
    }
    out.className = status === 200 ? "action" : "action bad";
    out.textContent = status === 200
      ? `disconnected ${user}: ${data.delivered} session(s) closed with 4006`
      : `disconnect failed (${status}): ${data.error}`;
  } catch (err) {
    out.className = "action bad";
    out.textContent = `disconnect failed: ${err.message}`;
  }
  refresh();
}

function init() {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const k = $("key").value.trim();
    if (k) signIn(k);
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    view.q = $("q").value.trim();
    view.offset = 0;
    refresh();
  });
  $("clear").addEventListener("click", () => {
    $("q").value = "";
    view.q = "";
    view.offset = 0;
    refresh();
  });
  $("prev").addEventListener("click", () => {
    view.offset = Math.max(0, view.offset - PAGE);
    refresh();
  });
  $("next").addEventListener("click", () => {
    view.offset += PAGE;
    refresh();
  });
  if (key()) {
    $("login").hidden = true;
    refresh();
  } else {
    $("key").focus();
  }
}

init();
