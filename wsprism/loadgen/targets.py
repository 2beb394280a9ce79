"""The servers a bench drives: the gateway (spawned or already running) and the baselines.

A spawned server gets a free port on 127.0.0.1, its output goes to a temporary log
file (so a full pipe can never block it), and it is stopped with SIGTERM, then SIGKILL.
The baseline servers ship inside the package (`wsprism/loadgen/baselines/`), so the
bench runs the same from an installed wheel as from the source tree.
"""
from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import psutil

import wsprism

from . import bun

REPO_ROOT = Path(wsprism.__file__).resolve().parent.parent   # site-packages when installed
BASELINE_DIR = Path(__file__).resolve().parent / "baselines"
BASELINES = {"picows": "picows_server.py", "websockets": "websockets_server.py", "bun": "bun_server.js"}
DEFAULT_BASELINES = ("picows", "websockets")    # --baseline; bun is asked for by name
START_TIMEOUT = 30.0


class TargetError(Exception):
    """A target could not be started or reached; the message is one line."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def url_template(base: str, tenant: str, ticket: str) -> str:
    """The per-connection URL; `{i}` is replaced by the connection's number.

    A URL that already carries a ticket is used as is for every connection.
    """
    parts = urlsplit(base)
    query = parse_qs(parts.query)
    if "ticket" in query:
        return base
    path = parts.path if parts.path not in ("", "/") else "/v1/ws"
    pairs = [(k, v) for k, vs in query.items() for v in vs]
    if "tenant" not in query:
        pairs.append(("tenant", tenant))
    q = urlencode(pairs, safe=":")
    q += ("&" if q else "") + "ticket=" + ticket
    return urlunsplit((parts.scheme or "ws", parts.netloc, path, q, ""))


def read_config(path: str) -> dict:
    """The gateway config as a mapping (only read here: the gateway validates it)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise TargetError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TargetError(f"config {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise TargetError(f"config {path} is not a mapping")
    return data


def bench_identity(config: str, tenant: str | None, ticket: str | None) -> tuple[str, str]:
    """(tenant, ticket template) for a gateway spawned from `config`.

    Without `--tenant`: the first tenant with dev auth (any ticket `dev:<name>` is a
    user, so `dev:u{i}` gives one user per connection), else the first tenant, which
    then needs `--ticket`. A named tenant must exist in the config.
    """
    tenants = read_config(config).get("tenants") or []
    tenants = [t for t in tenants if isinstance(t, dict) and isinstance(t.get("id"), str)]
    modes = {t["id"]: ((t.get("auth") or {}).get("mode") or "dev") for t in tenants}
    if not modes:
        raise TargetError(f"config {config} has no tenants to connect to")
    if tenant is None:
        tenant = next((tid for tid, mode in modes.items() if mode == "dev"), next(iter(modes)))
    elif tenant not in modes:
        raise TargetError(f"tenant {tenant!r} is not in {config} (it has {', '.join(modes)})")
    if ticket is None:
        if modes[tenant] != "dev":
            raise TargetError(f"tenant {tenant!r} of {config} uses {modes[tenant]} auth: give --ticket "
                              "(a ticket it accepts; {i} = connection number), or use a tenant with dev auth")
        ticket = "dev:u{i}"
    return tenant, ticket


# `--pin SERVER:CLIENT`: CPU sets for spawned servers and for the client processes
# (command.py sets them; None = not pinned)
PIN: dict[str, set[int] | None] = {"server": None, "client": None}


def _raise_fd_limit() -> None:
    """preexec of a spawned server: the fd limit up, and its CPUs when pinned (before
    exec, so every thread it starts inherits them)."""
    if PIN["server"]:
        os.sched_setaffinity(0, PIN["server"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


class Target:
    """Where the load goes."""

    name = "target"

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self) -> None:
        pass

    def launch(self) -> None:
        """Begin starting (several targets can start side by side); wait_ready() finishes."""

    def wait_ready(self) -> None:
        self.start()

    def stop(self) -> None:
        pass

    def restart(self) -> None:
        pass

    @property
    def spawned(self) -> bool:
        return False

    @property
    def pid(self) -> int | None:
        return None

    def process(self) -> psutil.Process | None:
        pid = self.pid
        if pid is None:
            return None
        try:
            return psutil.Process(pid)
        except psutil.Error:
            return None

    def alive(self) -> bool:
        return True

    def death_note(self) -> str:
        return "server is gone"

    def url(self, tenant: str, ticket: str) -> str:
        raise NotImplementedError


class ExternalTarget(Target):
    """A server someone else runs: `--url`, with `--server-pid` when known."""

    def __init__(self, name: str, url: str, pid: int | None) -> None:
        super().__init__(name)
        self._url = url
        self._pid = pid

    @property
    def pid(self) -> int | None:
        return self._pid

    def alive(self) -> bool:
        if self._pid is None:
            return True
        try:
            p = psutil.Process(self._pid)
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def death_note(self) -> str:
        return f"server pid {self._pid} is gone"

    def url(self, tenant: str, ticket: str) -> str:
        return url_template(self._url, tenant, ticket)


class SpawnedTarget(Target):
    """A server process we start on a free port and stop at the end."""

    def __init__(self, name: str, kind: str, config: str | None = None, overrides: dict | None = None) -> None:
        super().__init__(name)
        self.kind = kind  # "gateway" or a baseline name
        self.config = config
        self.overrides = overrides or {}  # top-level config keys replaced (a cluster's broker)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = ""
        self._cfg_path = ""

    @property
    def spawned(self) -> bool:
        return True

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _command(self) -> list[str]:
        if self.kind == "gateway":
            return [sys.executable, "-m", "wsprism", "start", "--config", self._write_config()]
        script = BASELINE_DIR / BASELINES[self.kind]
        if not script.exists():
            raise TargetError(f"baseline server not found: {script}")
        if self.kind == "bun":
            try:
                exe = bun.find_or_install()
            except bun.BunUnavailable as exc:
                raise TargetError(f"bun baseline skipped: {exc}") from None
            return [exe, str(script), "--port", str(self.port)]
        if self.kind == "websockets" and importlib.util.find_spec("websockets") is None:
            raise TargetError("websockets baseline skipped: the websockets library is not installed "
                              "(pip install 'wsprism[bench]')")
        return [sys.executable, str(script), "--port", str(self.port)]

    def _write_config(self) -> str:
        """A temporary copy of the gateway config listening on our free port (and the
        server API, if the config has one, on another)."""
        import yaml

        data = read_config(self.config)
        data.update(self.overrides)
        gateway = data.setdefault("gateway", {}) or {}
        data["gateway"] = gateway
        gateway["listen"] = f"127.0.0.1:{self.port}"
        if isinstance(gateway.get("api"), dict) and "listen" in gateway["api"]:
            gateway["api"]["listen"] = f"127.0.0.1:{free_port()}"
        fd, path = tempfile.mkstemp(prefix="wsprism-bench-", suffix=".yaml")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(data, f, sort_keys=False)
        self._cfg_path = path
        return path

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        self.port = free_port()
        cmd = self._command()
        fd, self.log_path = tempfile.mkstemp(prefix=f"wsprism-bench-{self.name}-", suffix=".log")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, preexec_fn=_raise_fd_limit, start_new_session=True)
        os.close(fd)

    def wait_ready(self) -> None:
        if self.proc is None:
            raise TargetError(f"{self.name} was not launched")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TargetError(f"{self.name} did not start: {self.death_note()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TargetError(f"{self.name} did not listen on port {self.port} within {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._cfg_path:
            try:
                os.unlink(self._cfg_path)
            except OSError:
                pass
            self._cfg_path = ""
        self._last_proc = proc

    def restart(self) -> None:
        self.cleanup()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 3) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                tail = [ln.strip() for ln in f.read().splitlines() if ln.strip()][-lines:]
        except OSError:
            return ""
        return " | ".join(tail)

    def death_note(self) -> str:
        proc = self.proc or getattr(self, "_last_proc", None)
        code = proc.poll() if proc is not None else None
        tail = self.log_tail(1)
        what = f"exited with code {code}" if code is not None else "is not running"
        return f"{self.name} {what}" + (f": {tail}" if tail else "")

    def url(self, tenant: str, ticket: str) -> str:
        return url_template(f"ws://127.0.0.1:{self.port}/v1/ws", tenant, ticket)

    def cleanup(self, keep_log: bool = False) -> None:
        self.stop()
        if self.log_path and not keep_log:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass



def redis_command(port: int, *args: str, timeout: float = 2.0):
    """One command to the redis-server on 127.0.0.1:`port` over a fresh socket (what
    redis-cli would do, without needing it); the reply decoded as text."""
    import hiredis

    reader = hiredis.Reader(encoding="utf-8", errors="replace")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(hiredis.pack_command(args))
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise OSError("closed")
            reader.feed(data)
            reply = reader.gets()
            if reply is not False:
                return reply


class ClusterTarget(Target):
    """`--nodes N` (N > 1): a redis-server on a free port and N gateway processes from the
    same config, each its own broker node on its own port (as N workers would be; own
    ports so the bench knows which node every member is on). Connections are spread over
    the nodes by the client: the senders on node 0, the others by id. The runner samples
    every node's and Redis' CPU, Redis' `INFO commandstats`, and each node's broker
    counters, and reports them per node."""

    def __init__(self, name: str, config: str, nodes: int) -> None:
        super().__init__(name)
        self.config = config
        self.count = nodes
        self.redis: subprocess.Popen | None = None
        self.redis_port = 0
        self.redis_dir = ""
        self.nodes = [SpawnedTarget(f"{name} node {k}", "gateway", config) for k in range(nodes)]

    @property
    def spawned(self) -> bool:
        return True

    @property
    def pid(self) -> int | None:
        return self.nodes[0].pid

    def process(self) -> psutil.Process | None:
        return None                 # CPU is sampled per node (processes())

    def processes(self) -> list[tuple[str, psutil.Process | None]]:
        out = [(f"node{k}", n.process()) for k, n in enumerate(self.nodes)]
        out.append(("redis", psutil.Process(self.redis.pid) if self.redis is not None else None))
        return out

    def launch(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise TargetError("--nodes needs redis-server on the PATH (Debian: apt-get install redis-server)")
        self.redis_port = free_port()
        self.redis_dir = tempfile.mkdtemp(prefix="wsprism-bench-redis-")
        self.redis = subprocess.Popen(
            [exe, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.redis_dir, "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.redis_cmd("PING") == "PONG":
                    break
            except OSError:
                pass
            if self.redis.poll() is not None or time.monotonic() > deadline:
                raise TargetError("redis-server did not start")
            time.sleep(0.02)
        broker = {"url": f"redis://127.0.0.1:{self.redis_port}/0", "prefix": "bench"}
        for n in self.nodes:
            n.overrides = {"broker": broker}
            n.launch()

    def wait_ready(self) -> None:
        for n in self.nodes:
            n.wait_ready()
        deadline = time.monotonic() + START_TIMEOUT
        for n in self.nodes:
            while self.node_metrics(n).get(("wsprism_broker_up", ())) != 1.0:
                if time.monotonic() > deadline:
                    raise TargetError(f"{n.name}: broker not up within {START_TIMEOUT:.0f} s")
                time.sleep(0.05)

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def alive(self) -> bool:
        return all(n.alive() for n in self.nodes) and self.redis is not None and self.redis.poll() is None

    def death_note(self) -> str:
        for n in self.nodes:
            if not n.alive():
                return n.death_note()
        return "redis-server is gone"

    def url(self, tenant: str, ticket: str) -> str:
        return "|".join(n.url(tenant, ticket) for n in self.nodes)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        proc, self.redis = self.redis, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if self.redis_dir:
            shutil.rmtree(self.redis_dir, ignore_errors=True)
            self.redis_dir = ""

    def cleanup(self, keep_log: bool = False) -> None:
        for n in self.nodes:
            n.cleanup(keep_log)
        self.stop()

    def restart(self) -> None:
        self.cleanup()
        self.start()

    @property
    def log_path(self) -> str:
        return ", ".join(n.log_path for n in self.nodes)

    # -- what the runner samples around the measured window ----------------------------
    def redis_cmd(self, *args: str):
        return redis_command(self.redis_port, *args)

    @staticmethod
    def node_metrics(node: SpawnedTarget) -> dict:
        """{(sample name, labels): value} of the node's wsprism_broker_* families."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/metrics", timeout=2) as resp:
                body = resp.read().decode(errors="replace")
        except OSError:
            return {}
        out = {}
        for fam in text_string_to_metric_families(body):
            if fam.name.startswith("wsprism_broker"):
                for smp in fam.samples:
                    out[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
        return out

    def sample(self) -> dict:
        info = {}
        try:
            for line in self.redis_cmd("INFO", "all").splitlines():
                key, sep, value = line.partition(":")
                if sep:
                    info[key] = value
        except OSError:
            pass
        return {"redis": info, "nodes": [self.node_metrics(n) for n in self.nodes]}

    @staticmethod
    def compare(before: dict, after: dict, window: float, deliveries: int) -> dict:
        """Redis' own cost over the window (`INFO cpu`, `INFO commandstats`) and each
        node's frames per publish, per lane."""
        a, b = before["redis"], after["redis"]
        out: dict = {}
        try:
            cpu = sum(float(b[k]) - float(a[k]) for k in ("used_cpu_sys", "used_cpu_user"))
            out["redis_cpu_pct"] = round(100 * cpu / window, 1)
            out["redis_us_per_delivery"] = round(cpu * 1e6 / deliveries, 4) if deliveries else None
        except (KeyError, ValueError):
            pass
        stats = {}
        for key, value in b.items():
            if not key.startswith("cmdstat_"):
                continue
            fields = dict(kv.split("=", 1) for kv in value.split(","))
            old = dict(kv.split("=", 1) for kv in a.get(key, "calls=0,usec=0").split(","))
            calls = int(fields["calls"]) - int(old["calls"])
            if calls > 0:
                usec = float(fields["usec"]) - float(old["usec"])
                stats[key[8:]] = {"calls": calls, "usec_per_call": round(usec / calls, 2)}
        out["commandstats"] = stats
        lanes = []
        for nb, na in zip(before["nodes"], after["nodes"]):
            per = {}
            for lane in ("ext", "hot"):
                key = (("lane", lane),)
                pubs = na.get(("wsprism_broker_published_total", key), 0) - nb.get(("wsprism_broker_published_total", key), 0)
                frames = (na.get(("wsprism_broker_published_frames_total", key), 0)
                          - nb.get(("wsprism_broker_published_frames_total", key), 0))
                per[lane] = {"publishes": int(pubs), "frames": int(frames),
                             "frames_per_publish": round(frames / pubs, 2) if pubs else None}
            lanes.append(per)
        out["node_publishes"] = lanes
        return out
