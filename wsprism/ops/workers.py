"""`wsprism start` with `gateway.workers: N` > 1: a supervisor and N worker processes on
one port (SPEC 11).

Each worker is a whole gateway (its own event loop, sessions and broker node), started
as `python -m wsprism start` with WSPRISM_WORKER=<index> in its environment, and binds
`gateway.listen` with SO_REUSEPORT, so the kernel spreads new connections over them. The
supervisor holds that port bound (never listening) from before the first worker starts
until it exits, so a port 0 is resolved once and the same port survives worker restarts.

- A worker that exits while the host is not stopping is restarted, logged and counted
  (`wsprism_worker_restarts_total{worker}`); one that dies again within MIN_UPTIME of its
  start waits twice as long as the last time (0.5 s up to 30 s), so a crash loop does
  not spin; one that ran for MIN_UPTIME starts again at once.
- SIGTERM/SIGINT: forwarded to every worker (each drains, SPEC 6); the supervisor exits 0
  once all of them have exited 0 (1 otherwise), and kills what is still running
  drain_grace_ms + STOP_MARGIN later.
- SIGHUP: the file is checked here first; a bad file is logged once and not forwarded,
  a good one is forwarded and every worker reloads it.

Metrics for the whole host: ops/hostmetrics.py (workers share snapshots in the run
directory; this process keeps the counters of workers that died).
"""
import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile

from ..config import ConfigError, load_config, split_listen
from . import hostmetrics

log = logging.getLogger("wsprism.workers")

MIN_UPTIME = 10.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STOP_MARGIN = 5.0
READY_TIMEOUT = 30.0

ENV_INDEX = "WSPRISM_WORKER"
ENV_DIR = "WSPRISM_WORKER_DIR"
ENV_PORT = "WSPRISM_WORKER_PORT"


class WorkerInfo:
    """What a worker process learns from its supervisor (None when not a worker)."""

    __slots__ = ("index", "run_dir", "port")

    def __init__(self, index: int, run_dir: str, port: int) -> None:
        self.index = index
        self.run_dir = run_dir
        self.port = port

    @classmethod
    def from_env(cls) -> "WorkerInfo | None":
        index = os.environ.get(ENV_INDEX)
        if index is None:
            return None
        return cls(int(index), os.environ[ENV_DIR], int(os.environ[ENV_PORT]))


def _hold_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) the port with SO_REUSEPORT: resolves port 0, keeps it ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host or "0.0.0.0", port))
    return sock


class Worker:
    __slots__ = ("index", "proc", "started", "delay", "restarts", "task")

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc = None
        self.started = 0.0
        self.delay = 0.0
        self.restarts = 0
        self.task = None


class Supervisor:
    def __init__(self, config, config_path: str, log_level: str | None, log_format: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.log_args = ((["--log-level", log_level] if log_level else [])
                         + (["--log-format", log_format] if log_format else []))
        self.n = config.gateway.workers
        self.workers = [Worker(i) for i in range(self.n)]
        self.stopping = False
        self.run_dir = tempfile.mkdtemp(prefix="wsprism-workers-",
                                        dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        host, port = split_listen(config.gateway.listen)
        self.host = host
        self.port_sock = _hold_port(host, port)
        self.port = self.port_sock.getsockname()[1]
        self._exited: asyncio.Event | None = None

    # -- workers ------------------------------------------------------------------------
    async def _spawn(self, w: Worker) -> None:
        env = dict(os.environ)
        env.update({ENV_INDEX: str(w.index), ENV_DIR: self.run_dir, ENV_PORT: str(self.port)})
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wsprism", "start", "--config", self.config_path,
            *self.log_args, env=env)
        w.started = asyncio.get_running_loop().time()
        if self.stopping:                   # SIGTERM came while it was being started
            w.proc.send_signal(signal.SIGTERM)

    async def _watch(self, w: Worker) -> None:
        loop = asyncio.get_running_loop()
        while True:
            code = await w.proc.wait()
            hostmetrics.retire(self.run_dir, w.index)
            if self.stopping:
                return
            uptime = loop.time() - w.started
            w.delay = min(BACKOFF_MAX, max(BACKOFF_FIRST, w.delay * 2)) if uptime < MIN_UPTIME else 0.0
            w.restarts += 1
            self._write_snapshot()
            how = f"signal {-code}" if code < 0 else f"code {code}"
            log.warning("worker %d (pid %d) exited with %s after %.1fs; restarting it%s", w.index, w.proc.pid,
                        how, uptime, f" in {w.delay:.1f}s" if w.delay else "")
            if w.delay:
                await asyncio.sleep(w.delay)
            if self.stopping:
                return
            await self._spawn(w)

    def _write_snapshot(self) -> None:
        restarts = [["wsprism_worker_restarts_total", {"worker": str(w.index)}, w.restarts] for w in self.workers]
        data = [
            ["wsprism_worker_restarts", "Worker processes restarted after they died", "counter", restarts],
            ["wsprism_workers", "Worker processes configured", "gauge", [["wsprism_workers", {}, self.n]]],
        ]
        hostmetrics.write_atomic(os.path.join(self.run_dir, hostmetrics.SUPERVISOR), data)

    async def _wait_ready(self) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        want = {hostmetrics.worker_file(w.index) for w in self.workers}
        while not want <= set(os.listdir(self.run_dir)):
            if loop.time() > deadline or self.stopping:
                return False
            await asyncio.sleep(0.05)
        return True

    # -- signals ------------------------------------------------------------------------
    def _on_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("signal received: draining %d workers", self.n)
        self._signal_all(signal.SIGTERM)
        self._exited.set()

    def _on_reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload rejected, keeping the running configuration: %s", exc)
            return
        if new.gateway.workers != self.n:
            log.warning("gateway.workers changed: needs a restart to take effect")
        self._signal_all(signal.SIGHUP)

    def _signal_all(self, sig) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                try:
                    w.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    # -- run ----------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._exited = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        self._write_snapshot()
        for w in self.workers:
            if self.stopping:
                break
            await self._spawn(w)
            w.task = loop.create_task(self._watch(w))
        if await self._wait_ready():
            log.info("wsPrism supervisor: %d workers active at %s:%d", self.n, self.host or "0.0.0.0", self.port)
        await self._exited.wait()
        grace = self.config.gateway.drain_grace_ms / 1000.0 + STOP_MARGIN
        deadline = loop.time() + grace
        # a watcher in the middle of a restart starts its worker (SIGTERMed at once, see
        # _spawn) and returns once that one exits: its w.proc is the one to wait for
        watchers = [w.task for w in self.workers if w.task is not None]
        if watchers:
            await asyncio.wait(watchers, timeout=grace)
        try:
            await asyncio.wait_for(self._all_exited(), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            log.error("workers still running %.0fs after SIGTERM: killing them", grace)
            self._signal_all(signal.SIGKILL)
            await self._all_exited()
            if watchers:
                await asyncio.wait(watchers)
            self._signal_all(signal.SIGKILL)  # one started after the first kill
            await self._all_exited()
        for w in self.workers:
            if w.task is not None:
                w.task.cancel()
        codes = [w.proc.returncode for w in self.workers if w.proc is not None]
        log.info("stopped (%d workers, exit codes %s)", self.n, codes)
        return 0 if all(c == 0 for c in codes) else 1

    async def _all_exited(self) -> None:
        await asyncio.gather(*(w.proc.wait() for w in self.workers if w.proc is not None))

    def cleanup(self) -> None:
        self.port_sock.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def supervise(config, config_path: str, log_level: str | None = None, log_format: str | None = None) -> int:
    """`log_level`/`log_format`: the command line's, handed on to every worker."""
    sup = Supervisor(config, config_path, log_level, log_format)
    try:
        return asyncio.run(sup.run())
    finally:
        sup.cleanup()
