"""Render docs/grafana/wsprism.json from real Prometheus data into a PNG (docs/grafana/wsprism.png).

    python scripts/render_dashboard.py [--seconds 240] [--out docs/grafana/wsprism.png]

Grafana itself cannot be installed on the development machine (no Debian, PyPI or npm
package ships the server), so this script does the part of Grafana the picture needs,
from the same inputs:

1. runs a real gateway (`python -m wsprism start`, compiled path, a real redis-server as its
   broker, history in tenant chat-eu) with the server API,
   a service webhook and webhook auth on a real backend (tests/integration/backend_app.py),
   and drives it for `--seconds` with a scripted mix of traffic (sessions ramping up and
   down in four tenants, chat, Hot Lane relay, webhook calls with some slow, failing and
   timing-out answers, webhook logins with some refused, bad handshakes, a rate-limit
   flood, stuck readers that end as egress drops and 4005s, server-API calls);
2. runs a real Prometheus (Debian's 2.42) scraping it every second;
3. for every panel of the dashboard JSON, sends each target's `expr` to Prometheus'
   `query_range` over the run ($__rate_interval = 10s, the dashboard's variables at
   "All"), and draws the result where the JSON's `gridPos` puts the panel (24 columns,
   30 px rows, 8 px gaps: Grafana's grid), with the panel's title, unit, legendFormat,
   stacking, thresholds and value mappings, in Grafana's dark theme and classic palette:
   time series as lines, stats as the last value over a sparkline, heatmaps as cells;
4. screenshots that HTML page with headless Chromium;
5. with `--admin-out`, at 85 % of the run (traffic still flowing), also screenshots the
   gateway's admin page (`/admin/`, signed in with tenant acme's key, after a search) with
   Playwright.

What differs from Grafana: the drawing code (ours, not Grafana's React panels), fonts,
and details such as tooltips and axis tick choice. The numbers are Prometheus' answers
to the dashboard's own expressions.
"""
import argparse
import asyncio
import html
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "soak"))

from tests.integration.backend_app import BackendServer, free_port  # noqa: E402
from tests.prometheus import Prometheus  # noqa: E402
from tests.redisproc import RedisProc  # noqa: E402

API_KEY = "render-api-key-0123456789abcdef"
RATE_INTERVAL = "10s"
CONFIG = """
version: 1
gateway:
  listen: "127.0.0.1:{port}"
  outbound_high_water_bytes: 65536
  writer_send_timeout_ms: 500
  api:
    listen: "127.0.0.1:{api_port}"
    keys: {{acme: {{env: WSPRISM_RENDER_KEY}}, game: {{env: WSPRISM_RENDER_KEY_GAME}}}}
broker: {{url: "{redis}"}}
tenants:
  - id: acme
    limits: {{max_frame_bytes: 65536}}
    policy:
      ext_allowlist: ["room:*", "chat:send", "sys:*", "match:*"]
      rate_limit_rps: 50
      rate_limit_burst: 100
    services:
      match: {{webhook: "{backend}/svc", timeout_ms: 500}}
  - id: game
    policy:
      ext_allowlist: ["room:*", "sys:*"]
      hot_allowlist: ["1:*"]
  - id: chat-eu
    policy: {{ext_allowlist: ["room:*", "chat:send", "sys:*"], history: {{size: 100, ttl_ms: 300000}}}}
  - id: hook
    auth: {{mode: webhook, url: "{backend}/auth", timeout_ms: 500}}
    policy: {{ext_allowlist: ["room:*", "sys:*"]}}
"""


# --- the scenario ---------------------------------------------------------------------

class Scenario:
    def __init__(self, seconds: float, during=None) -> None:
        self.seconds = seconds
        self.during = during                 # called (in a thread) at 85 % of the run
        self.conns: dict[str, list] = {"acme": [], "game": [], "chat-eu": [], "hook": []}
        self.stuck: list = []
        self.rng = random.Random(15)

    async def run(self, port: int, api_port: int) -> None:
        import aiohttp

        self.port, self.api_port = port, api_port
        self.t0 = time.monotonic()
        self.http = aiohttp.ClientSession()
        try:
            tasks = [asyncio.create_task(c) for c in (
                self.population(), self.chat(), self.hot(), self.webhooks(), self.noise(), self.api(),
                self.stuck_readers(), self.flood())]
            if self.during is not None:
                await asyncio.sleep(0.85 * self.seconds)
                await asyncio.to_thread(self.during)
            await asyncio.sleep(max(0.0, self.seconds - self.t()))
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self.http.close()

    def t(self) -> float:
        return time.monotonic() - self.t0

    def url(self, tenant: str) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws?tenant={tenant}"

    def target(self, tenant: str, t: float) -> int:
        """How many sessions a tenant should have at time t (ramp up, plateau, dip, recover)."""
        peak = {"acme": 220, "game": 120, "chat-eu": 90, "hook": 40}[tenant]
        f = self.seconds
        if t < 0.25 * f:
            share = t / (0.25 * f)
        elif t < 0.6 * f:
            share = 1.0
        elif t < 0.75 * f:
            share = 0.65 if tenant in ("acme", "chat-eu") else 0.9
        else:
            share = 0.85
        return int(peak * share)

    async def open(self, tenant: str, i: int):
        from clients import Conn, open_conn
        from picows import ws_connect

        if tenant == "hook":
            ticket = "deny" if self.rng.random() < 0.15 else f"ok:h{i}"
            _, conn = await ws_connect(lambda: Conn(f"h{i}"), f"{self.url('hook')}&ticket={ticket}")
            try:
                await conn.expect("authed", 3)
            except Exception:
                conn.abort()
                return None
        else:
            conn = await open_conn(self.url(tenant), f"{tenant[:2]}{i}")
        room = {"acme": f"lobby:{i % 8}", "game": f"match:{i % 6}", "chat-eu": f"channel:{i % 12}",
                "hook": f"desk:{i % 4}"}[tenant]
        conn.join(room)
        conn.room = room
        return conn

    async def population(self) -> None:
        n = 0
        while True:
            for tenant, conns in self.conns.items():
                if conns and self.rng.random() < 0.25:          # churn: someone leaves, someone comes
                    conns.pop(self.rng.randrange(len(conns))).abort()
                want = self.target(tenant, self.t())
                while len(conns) < want:
                    n += 1
                    try:
                        c = await self.open(tenant, n)
                    except Exception:
                        c = None
                    if c is not None:
                        conns.append(c)
                    if tenant == "hook":
                        break                      # logins trickle in
                while len(conns) > want:
                    c = conns.pop(self.rng.randrange(len(conns)))
                    if self.rng.random() < 0.2:
                        c.abort()
                    else:
                        asyncio.ensure_future(c.close(2)).add_done_callback(lambda f: f.exception())
            await asyncio.sleep(0.2)

    async def chat(self) -> None:
        text = "x" * 200
        while True:
            for tenant in ("acme", "chat-eu"):
                for c in list(self.conns[tenant]):
                    if self.rng.random() < 0.08 and c.transport is not None:
                        c.chat(c.room, text)
            await asyncio.sleep(0.1)

    async def hot(self) -> None:
        payload = bytes(48)
        while True:
            for c in list(self.conns["game"]):
                if self.rng.random() < 0.5 and c.transport is not None:
                    c.hot(payload)
            await asyncio.sleep(0.1)

    async def webhooks(self) -> None:
        while True:
            for c in list(self.conns["acme"]):
                if self.rng.random() < 0.03 and c.transport is not None:
                    r = self.rng.random()
                    late = self.t() > 0.45 * self.seconds and self.t() < 0.6 * self.seconds
                    if r < (0.15 if late else 0.02):
                        do = {"sleep": 1}                       # past timeout_ms: TIMEOUT
                    elif r < (0.25 if late else 0.05):
                        do = {"status": 500}
                    elif r < 0.3:
                        do = {"sleep": self.rng.uniform(0.02, 0.2), "answer": {"reply": {"ok": True}}}
                    else:
                        do = {"answer": {"reply": {"ok": True}}}
                    c.send_text({"v": 1, "svc": "match", "type": "move", "data": {"do": do}})
            await asyncio.sleep(0.1)

    async def noise(self) -> None:
        """Bad handshakes and refused messages, a few a second."""
        from tests.client import UPGRADE_HEADERS, http_get

        while True:
            r = self.rng.random()
            if r < 0.3:
                path = "/v1/ws?tenant=nope&ticket=dev"
            elif r < 0.5:
                path = "/v1/ws?tenant=acme&ticket=dev:bad%20user"
            elif r < 0.6:
                path = "/v1/ws?tenant=acme"
            elif r < 0.7:
                path = "/wp-login.php"
            else:
                path = None
            if path is not None:
                await asyncio.to_thread(http_get, self.port, path, UPGRADE_HEADERS)
            for c in self.rng.sample(self.conns["acme"], min(2, len(self.conns["acme"]))):
                if c.transport is not None:
                    c.send_text({"v": 1, "svc": "admin", "type": "drop_tables"})        # NOT_ALLOWED
            for c in self.rng.sample(self.conns["game"], min(1, len(self.conns["game"]))):
                if c.transport is not None:
                    c.transport.send(2, b"\x05\x01\x00")                                # hot 5:1 not allowed
            await asyncio.sleep(0.25)

    async def api(self) -> None:
        n = 0
        while True:
            n += 1
            hdr = {"Authorization": f"Bearer {API_KEY}"}
            body = {"tenant": "acme", "room": f"lobby:{n % 8}", "svc": "news", "type": "tick", "data": {"n": n}}
            async with self.http.post(f"http://127.0.0.1:{self.api_port}/v1/publish", json=body, headers=hdr) as r:
                await r.read()
            if n % 5 == 0:
                async with self.http.get(f"http://127.0.0.1:{self.api_port}/v1/admin/state", headers=hdr) as r:
                    await r.read()
            if n % 15 == 0:
                async with self.http.get(f"http://127.0.0.1:{self.api_port}/v1/stats?tenant=acme",
                                         headers={"Authorization": "Bearer wrong"}) as r:
                    await r.read()
            await asyncio.sleep(0.5)

    async def stuck_readers(self) -> None:
        """From 40 % of the run, now and then a game client stops reading in a room of
        its own, where a companion sends Hot Lane frames and the backend publishes 32 KB
        blobs through the server API: once the kernel's buffer and then the gateway's
        64 KiB mark are full, the companion's frames to it are dropped (egress drops) and
        500 ms later it is closed as a slow consumer (4005)."""
        from clients import open_conn

        await asyncio.sleep(0.4 * self.seconds)
        hdr = {"Authorization": f"Bearer {API_KEY}-game"}
        blob = "b" * 32768
        n = 0
        while True:
            n += 1
            room = f"stuck:{n}"
            try:
                c = await open_conn(self.url("game"), f"stuck{n}", rcvbuf=4096)
                mate = await open_conn(self.url("game"), f"mate{n}")
            except Exception:
                await asyncio.sleep(1)
                continue
            for x in (c, mate):
                x.join(room)
                await x.expect("joined")
            c.pause()
            end = time.monotonic() + self.rng.uniform(8, 12)
            while time.monotonic() < end:
                for _ in range(5):
                    mate.hot(bytes(48))
                body = {"tenant": "game", "room": room, "svc": "replay", "type": "chunk", "data": blob}
                async with self.http.post(f"http://127.0.0.1:{self.api_port}/v1/publish", json=body,
                                          headers=hdr) as r:
                    await r.read()
                await asyncio.sleep(0.05)
            c.abort()
            await mate.close(2)
            await asyncio.sleep(self.rng.uniform(1, 4))

    async def flood(self) -> None:
        """One client over its rate limit for a while (RATE_LIMITED drops)."""
        from clients import open_conn

        await asyncio.sleep(0.3 * self.seconds)
        c = await open_conn(self.url("acme"), "flooder")
        end = time.monotonic() + 0.15 * self.seconds
        while time.monotonic() < end:
            for _ in range(15):
                c.sys_ping()
            await asyncio.sleep(0.1)
        await c.close(2)


# --- drawing --------------------------------------------------------------------------

PALETTE = ["#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0",
           "#508642", "#CCA300", "#447EBC", "#C15C17", "#890F02", "#0A437C", "#6D1F62", "#584477"]
COLORS = {"green": "#73BF69", "orange": "#FF9830", "red": "#F2495C", "yellow": "#FADE2A", "blue": "#5794F2"}


def fmt_value(v: float | None, unit: str, decimals: int | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "No data"
    if unit == "percentunit":
        return f"{v * 100:.{0 if decimals is None else decimals}f}%"
    if unit == "s":
        a = abs(v)
        if a == 0:
            return "0 s"
        if a < 1e-3:
            return f"{v * 1e6:.3g} µs"
        if a < 1:
            return f"{v * 1e3:.3g} ms"
        return f"{v:.3g} s"
    if unit == "bytes":
        for div, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(v) >= div:
                return f"{v / div:.3g} {name}"
        return f"{v:.0f} B"
    suffix = {"reqps": " req/s", "ops": " ops/s"}.get(unit, "")
    a = abs(v)
    if a >= 1e6:
        s = f"{v / 1e6:.3g} Mil"
    elif a >= 1e3:
        s = f"{v / 1e3:.3g} K"
    elif a >= 100 or decimals == 0 or float(v).is_integer():
        s = f"{v:.0f}"
    elif a >= 1:
        s = f"{v:.3g}"
    else:
        s = f"{v:.2g}"
    return s + suffix


def nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def legend_name(fmt: str, metric: dict) -> str:
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in metric.items()) + "}"
    out = fmt
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v)
    return out.replace("{{instance}}", "gw").strip()


def series_values(result: list, times: list[float]) -> list[tuple[dict, list]]:
    out = []
    for r in result:
        by_t = {round(float(t), 3): float(v) for t, v in r["values"]}
        vals = [by_t.get(round(t, 3)) for t in times]
        vals = [None if v is None or math.isnan(v) or math.isinf(v) else v for v in vals]
        out.append((r["metric"], vals))
    return out


def svg_timeseries(panel, data, times, w, h) -> str:
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    stack = panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    fixed_max = panel["fieldConfig"]["defaults"].get("max")
    lines = []
    for target, result in data:
        for metric, vals in series_values(result, times):
            lines.append((legend_name(target.get("legendFormat", ""), metric), vals))
    lines.sort(key=lambda x: x[0])
    if stack:
        acc = [0.0] * len(times)
        stacked = []
        for name, vals in lines:
            base = acc[:]
            acc = [a + (v or 0.0) for a, v in zip(acc, vals)]
            stacked.append((name, [None if v is None else a for a, v in zip(acc, vals)], base))
    else:
        stacked = [(name, vals, None) for name, vals in lines]
    legend_rows = max(1, math.ceil(len(lines) / 4)) if lines else 0
    legend_h = 16 * min(legend_rows, 3)
    plot_l, plot_r, plot_t = 58, w - 8, 6
    plot_b = h - 20 - legend_h
    allv = [v for _, vals, _ in stacked for v in vals if v is not None]
    lo = 0.0
    hi = fixed_max if fixed_max is not None else (max(allv) * 1.1 if allv and max(allv) > 0 else 1.0)
    if unit == "bytes" and hi >= 1 << 20:          # round MiB, as Grafana's axis does
        ticks = [t * (1 << 20) for t in nice_ticks(lo, hi / (1 << 20))]
    else:
        ticks = nice_ticks(lo, hi)
    hi = max(hi, ticks[-1])
    t0, t1 = times[0], times[-1]

    def X(t):
        return plot_l + (t - t0) / (t1 - t0) * (plot_r - plot_l)

    def Y(v):
        return plot_b - (v - lo) / (hi - lo) * (plot_b - plot_t)

    parts = [f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">']
    for tv in ticks:
        y = Y(tv)
        parts.append(f'<line x1="{plot_l}" x2="{plot_r}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{plot_l - 6}" y="{y + 4:.1f}" class="ax" text-anchor="end">'
                     f"{html.escape(fmt_value(tv, unit))}</text>")
    span = t1 - t0
    step = next(s for s in (30, 60, 120, 300, 600, 1800, 3600) if span / s <= 7)
    tt = math.ceil(t0 / step) * step
    while tt <= t1:
        x = X(tt)
        if x > plot_r - 16:                      # a label cut by the panel's edge
            break
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{plot_t}" y2="{plot_b}" class="grid"/>')
        parts.append(f'<text x="{x:.1f}" y="{plot_b + 14}" class="ax" text-anchor="middle">'
                     f'{time.strftime("%H:%M:%S" if step < 60 else "%H:%M", time.localtime(tt))}</text>')
        tt += step
    for i, (name, vals, base) in enumerate(stacked):
        color = PALETTE[i % len(PALETTE)]
        segs, cur = [], []
        for t, v in zip(times, vals):
            if v is None:
                if cur:
                    segs.append(cur)
                cur = []
            else:
                cur.append((X(t), Y(min(v, hi))))
        if cur:
            segs.append(cur)
        for seg in segs:
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in seg)
            if len(seg) > 1:
                if base is None:
                    area = pts + f" {seg[-1][0]:.1f},{plot_b} {seg[0][0]:.1f},{plot_b}"
                else:                                  # stacked: fill down to the series below
                    xs = {round(x, 1) for x, _ in seg}
                    below = [(X(t), Y(min(b, hi))) for t, b in zip(times, base) if round(X(t), 1) in xs]
                    area = pts + " " + " ".join(f"{x:.1f},{y:.1f}" for x, y in reversed(below))
                parts.append(f'<polygon points="{area}" fill="{color}" fill-opacity="0.1"/>')
                parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.2"/>')
            else:
                parts.append(f'<circle cx="{seg[0][0]:.1f}" cy="{seg[0][1]:.1f}" r="1.5" fill="{color}"/>')
    if not lines:
        parts.append(f'<text x="{w / 2}" y="{(plot_t + plot_b) / 2}" class="nodata" text-anchor="middle">No data</text>')
    ly = plot_b + 30
    col_w = (w - 16) / 4 if len(lines) > 3 else None
    x = 10
    for i, (name, _vals, _b) in enumerate(stacked[:12]):
        color = PALETTE[i % len(PALETTE)]
        if col_w:
            x = 10 + (i % 4) * col_w
            y = ly + (i // 4) * 16
        else:
            y = ly
        if y > h - 2:
            break
        label = html.escape(name if len(name) <= 34 else name[:33] + "…")
        parts.append(f'<rect x="{x:.1f}" y="{y - 7}" width="14" height="3" fill="{color}"/>'
                     f'<text x="{x + 18:.1f}" y="{y - 2}" class="lg">{label}</text>')
        if not col_w:
            x += 28 + 6.2 * len(label)
    parts.append("</svg>")
    return "".join(parts)


def svg_stat(panel, data, times, w, h) -> str:
    d = panel["fieldConfig"]["defaults"]
    unit, decimals = d.get("unit", "short"), d.get("decimals")
    vals = []
    for _target, result in data:
        for _metric, v in series_values(result, times):
            vals = v
    last = next((v for v in reversed(vals) if v is not None), None)
    text = fmt_value(last, unit, decimals)
    color = COLORS["green"]
    for step in d.get("thresholds", {}).get("steps", []):
        if step["value"] is None or (last is not None and last >= step["value"]):
            color = COLORS.get(step["color"], step["color"])
    for m in d.get("mappings", []):
        for key, opt in m.get("options", {}).items():
            if last is not None and float(key) == last:
                text = opt["text"]
                color = COLORS.get(opt.get("color"), color)
    parts = [f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">']
    pts = [(t, v) for t, v in zip(times, vals) if v is not None]
    if len(pts) > 1:
        hi = max(v for _, v in pts) or 1
        lo = min(0, min(v for _, v in pts))
        xs = [(t - times[0]) / (times[-1] - times[0]) * w for t, _ in pts]
        ys = [h - 4 - (v - lo) / (hi - lo or 1) * (h * 0.45) for _, v in pts]
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
        parts.append(f'<polygon points="{line} {xs[-1]:.1f},{h} {xs[0]:.1f},{h}" fill="{color}" fill-opacity="0.18"/>')
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.2"/>')
    size = min(h * 0.42, w / max(len(text), 1) * 1.5, 44)
    parts.append(f'<text x="{w / 2}" y="{h * 0.5}" text-anchor="middle" fill="{color}" '
                 f'style="font-size:{size:.0f}px;font-weight:500">{html.escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_heatmap(panel, data, times, w, h) -> str:
    (_target, result), = data
    buckets = []
    for metric, vals in series_values(result, times):
        le = metric.get("le", "+Inf")
        buckets.append((math.inf if le == "+Inf" else float(le), vals))
    buckets.sort(key=lambda b: b[0])
    # format=heatmap: Grafana turns cumulative `le` buckets into per-bucket counts
    rows = []
    prev = [0.0] * len(times)
    for le, vals in buckets:
        cur = [v or 0.0 for v in vals]
        rows.append((le, [max(0.0, c - p) for c, p in zip(cur, prev)]))
        prev = cur
    while rows and not any(rows[-1][1]):
        rows.pop()
    while len(rows) > 1 and not any(rows[0][1]):
        rows.pop(0)
    plot_l, plot_r, plot_t, plot_b = 58, w - 8, 6, h - 20
    parts = [f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">']
    if not rows:
        parts.append(f'<text x="{w / 2}" y="{h / 2}" class="nodata" text-anchor="middle">No data</text></svg>')
        return "".join(parts)
    # 60 columns at most (maxDataPoints)
    ncol = min(60, len(times))
    per = len(times) / ncol
    peak = max(max(r[1]) for r in rows) or 1
    cw = (plot_r - plot_l) / ncol
    rh = (plot_b - plot_t) / len(rows)
    for ri, (le, vals) in enumerate(rows):
        y = plot_b - (ri + 1) * rh
        for ci in range(ncol):
            chunk = vals[int(ci * per):int((ci + 1) * per) or 1]
            v = sum(chunk) / max(len(chunk), 1)
            if v <= 0:
                continue
            a = (v / peak) ** 0.5
            r_, g_, b_ = int(60 + 195 * a), int(30 + 110 * a), int(10 + 20 * a)
            parts.append(f'<rect x="{plot_l + ci * cw + 0.5:.1f}" y="{y + 0.5:.1f}" width="{cw - 1:.1f}" '
                         f'height="{rh - 1:.1f}" fill="rgb({r_},{g_},{b_})"/>')
        if len(rows) <= 12 or ri % 2 == 0:
            label = "+Inf" if math.isinf(le) else fmt_value(le, "s")
            parts.append(f'<text x="{plot_l - 6}" y="{y + rh / 2 + 4:.1f}" class="ax" text-anchor="end">{label}</text>')
    t0, t1 = times[0], times[-1]
    step = next(s for s in (30, 60, 120, 300, 600) if (t1 - t0) / s <= 7)
    tt = math.ceil(t0 / step) * step
    while tt <= t1:
        x = plot_l + (tt - t0) / (t1 - t0) * (plot_r - plot_l)
        parts.append(f'<text x="{x:.1f}" y="{plot_b + 14}" class="ax" text-anchor="middle">'
                     f'{time.strftime("%H:%M", time.localtime(tt))}</text>')
        tt += step
    parts.append("</svg>")
    return "".join(parts)


CSS = """
body { margin: 0; background: #111217; color: #ccccdc; font: 12px Inter, "Helvetica Neue", Arial, sans-serif; }
.top { display: flex; gap: 16px; align-items: center; padding: 10px 16px 4px; }
.top h1 { font-size: 17px; font-weight: 500; margin: 0; color: #d8d9da; }
.var { background: #181b1f; border: 1px solid #2c3235; border-radius: 2px; padding: 3px 8px; color: #ccccdc; }
.var b { color: #6e9fff; font-weight: 500; margin-right: 6px; }
.note { margin-left: auto; color: #8e8e8e; font-size: 11px; }
.grid { display: grid; grid-template-columns: repeat(24, 1fr); grid-auto-rows: 30px; gap: 8px; padding: 8px 16px 16px; }
.panel { background: #181b1f; border: 1px solid #2c3235; border-radius: 2px; overflow: hidden; }
.panel .title { height: 28px; line-height: 28px; padding: 0 8px; font-size: 13px; font-weight: 500; color: #ccccdc;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.row { color: #d8d9da; font-size: 14px; font-weight: 500; line-height: 30px; }
.row:before { content: "⌄ "; color: #8e8e8e; }
svg .grid { stroke: #2c3235; stroke-width: 1; }
svg .ax { fill: #8e8e8e; font-size: 10.5px; }
svg .lg { fill: #ccccdc; font-size: 11px; }
svg .nodata { fill: #8e8e8e; font-size: 13px; }
svg text { font-family: Inter, "Helvetica Neue", Arial, sans-serif; }
"""


def render_html(dash: dict, prom: Prometheus, start: float, end: float, width: int) -> str:
    start = math.floor(start)
    step = float(max(1, round((end - start) / 300)))
    times = [start + i * step for i in range(int((end - start) / step) + 1)]
    col = (width - 32 - 23 * 8) / 24
    cells = []
    for p in dash["panels"]:
        pos = p["gridPos"]
        style = f"grid-column: {pos['x'] + 1} / span {pos['w']}; grid-row: {pos['y'] + 1} / span {pos['h']};"
        if p["type"] == "row":
            cells.append(f'<div class="row" style="{style}">{html.escape(p["title"])}</div>')
            continue
        w = int(col * pos["w"] + 8 * (pos["w"] - 1)) - 2
        h = pos["h"] * 30 + (pos["h"] - 1) * 8 - 2 - 28
        data = []
        for t in p["targets"]:
            expr = (t["expr"].replace("$__rate_interval", RATE_INTERVAL).replace("$job", "wsprism")
                    .replace("$instance", ".*").replace("$tenant", ".*"))
            data.append((t, prom.query_range(expr, times[0], times[-1], step)))
        body = {"timeseries": svg_timeseries, "stat": svg_stat, "heatmap": svg_heatmap}[p["type"]](p, data, times, w, h)
        cells.append(f'<div class="panel" style="{style}"><div class="title">{html.escape(p["title"])}</div>{body}</div>')
    vars_ = "".join(f'<span class="var"><b>{html.escape(v.get("label") or v["name"])}</b>'
                    f'{"Prometheus" if v["type"] == "datasource" else ("wsprism" if v["name"] == "job" else "All")}</span>'
                    for v in dash["templating"]["list"])
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(start))
    note = (f"rendered by scripts/render_dashboard.py from Prometheus 2.42 query_range answers, "
            f"{when}, {int(end - start)} s, step {step:g} s")
    return (f'<!doctype html><html><head><meta charset="utf-8"><style>{CSS}</style></head><body>'
            f'<div class="top"><h1>{html.escape(dash["title"])}</h1>{vars_}<span class="note">{html.escape(note)}</span></div>'
            f'<div class="grid" style="width:{width - 32}px">{"".join(cells)}</div></body></html>')


def screenshot(html_path: str, out: str, width: int, height: int) -> None:
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}", f"--screenshot={out}", f"file://{html_path}"],
                   check=True, capture_output=True, timeout=120)


def admin_screenshot(api_port: int, out: str) -> None:
    """The admin page of the still-running gateway, signed in as tenant acme, searching "ac1"."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"http://127.0.0.1:{api_port}/admin/")
        page.fill("#key", API_KEY)
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#dash:not([hidden])")
        page.fill("#q", "ac1")
        page.click("#search-form button[type=submit]")
        expect(page.locator("#search-count")).to_contain_text("ac1")     # no eval: the page's CSP forbids it
        page.wait_for_timeout(2500)                     # one more refresh
        page.screenshot(path=out)                       # the viewport: the page's top and first rows
        browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--out", default=str(ROOT / "docs" / "grafana" / "wsprism.png"))
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--html", help="also keep the HTML page here")
    ap.add_argument("--admin-out", help="also screenshot the admin page into this PNG")
    args = ap.parse_args()

    import uvloop

    dash = json.loads((ROOT / "docs" / "grafana" / "wsprism.json").read_text())
    backend = BackendServer()
    port, api_port = free_port(), free_port()
    work = tempfile.mkdtemp(prefix="wsprism-render-")
    cfg = Path(work) / "wsprism.yaml"
    redis = RedisProc()                      # a real redis-server: the broker rows have data
    cfg.write_text(CONFIG.format(port=port, api_port=api_port, backend=f"http://127.0.0.1:{backend.port}",
                                 redis=redis.url))
    env = dict(os.environ, WSPRISM_RENDER_KEY=API_KEY, WSPRISM_RENDER_KEY_GAME=API_KEY + "-game")
    log = open(Path(work) / "gateway.log", "w")
    gw = subprocess.Popen([sys.executable, "-m", "wsprism", "start", "--config", str(cfg)], cwd=ROOT, env=env,
                          stdout=log, stderr=subprocess.STDOUT)
    prom = None
    try:
        deadline = time.monotonic() + 15
        while "Gateway active at" not in (Path(work) / "gateway.log").read_text():
            if gw.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((Path(work) / "gateway.log").read_text())
            time.sleep(0.1)
        prom = Prometheus([f"127.0.0.1:{port}"], interval=1.0)
        prom.wait_for_scrapes(2)
        start = time.time()
        print(f"driving the gateway for {args.seconds:.0f} s ...", flush=True)
        during = (lambda: admin_screenshot(api_port, args.admin_out)) if args.admin_out else None
        uvloop.run(Scenario(args.seconds, during).run(port, api_port))
        time.sleep(2)
        end = time.time()
        page = render_html(dash, prom, start, end, args.width)
        html_path = args.html or str(Path(work) / "dashboard.html")
        Path(html_path).write_text(page)
        height = 38 + 16 + max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dash["panels"]) * 38 + 10
        screenshot(html_path, args.out, args.width, height)
        print(f"wrote {args.out} ({args.width}x{height})")
        if args.admin_out:
            print(f"wrote {args.admin_out}")
    finally:
        if prom is not None:
            prom.stop()
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(15)
        except subprocess.TimeoutExpired:
            gw.kill()
        backend.stop()
        redis.stop()
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
