"""Runs one gateway process: logging, event loop, listener, signals (drain, reload)."""
import asyncio
import logging
import signal
import ssl as ssl_module

from . import __version__
from ._fast import USING_EXTENSIONS
from .auth import AuthSetupError
from .config import ConfigError, load_config, split_listen
from .gateway import Gateway
from .ops import gcfreeze, hostmetrics, liveness, logs
from .ops.workers import WorkerInfo, supervise
from .transport.server import start_server

log = logging.getLogger("wsprism")


def install_loop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def make_ssl(tls):
    if tls is None:
        return None
    ctx = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx


async def serve(config, config_path: str | None = None, ready=None, worker: WorkerInfo | None = None) -> int:
    """Run until drained. `ready(gateway, server)` is called once listening (tests).
    As one of `gateway.workers` (`worker` given), bind the supervisor's port with
    SO_REUSEPORT and answer /metrics for the whole host (ops/hostmetrics.py)."""
    gateway = Gateway(config, config_path)      # imports Python services, reads API keys
    gateway.worker = worker.index if worker is not None else None
    api = gateway.api
    api_cfg = config.gateway.api
    api_ssl = make_ssl(api_cfg.tls) if api_cfg is not None else None
    await gateway.start_services()              # their on_start, before any client comes
    host, port = split_listen(config.gateway.listen)
    if worker is not None:
        port = worker.port
    try:
        server = await start_server(gateway, host, port, ssl=make_ssl(config.gateway.tls),
                                    reuse_port=worker is not None)
    except BaseException:
        await gateway.stop_services()
        raise
    if api is not None:
        try:
            await api.start(api_ssl, reuse_port=worker is not None)
        except BaseException:
            server.close()
            await gateway.stop_services()
            raise
        api_host = split_listen(api_cfg.listen)[0]
        log.info("server API active at %s://%s:%d", "https" if api_ssl else "http", api_host, api.port)
    if gateway.cluster is not None:
        gateway.cluster.start()
    bound = server.sockets[0].getsockname()
    listen = config.gateway.listen if port else f"{host}:{bound[1]}"
    log.info("wsPrism Gateway active at %s", listen)
    for tenant in config.tenants:
        log.info('Loaded configuration for tenant: "%s"', tenant.id, extra={"tenant": tenant.id})
        if tenant.auth.mode == "dev":
            log.warning('tenant "%s" uses auth.mode dev: any client can log in; do not use in production',
                        tenant.id, extra={"tenant": tenant.id})
    if not USING_EXTENSIONS:
        log.warning("compiled fast path not active: running the pure-Python twins")
    loop = asyncio.get_running_loop()

    def on_stop_signal() -> None:
        if not gateway.stop_requested.is_set():
            log.info("signal received: draining")
            gateway.request_stop()

    def on_reload_signal() -> None:
        reload_from_file(gateway)

    if config_path is not None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, on_reload_signal)
    sweeper = loop.create_task(liveness.run(gateway))
    history_sweeper = loop.create_task(gateway.sweep_history())
    snapshots = collector = None
    if worker is not None:
        gateway.metrics_registry, collector = hostmetrics.host_registry(
            gateway.metrics_registry, worker.run_dir, worker.index)
        snapshots = loop.create_task(hostmetrics.publish_snapshots(collector))
    if ready is not None:
        ready(gateway, server)
    await gateway.stop_requested.wait()
    await gateway.drain()
    server.close()
    if gateway.cluster is not None:
        await gateway.cluster.close()
    if api is not None:
        await api.stop()
    await gateway.stop_services()
    await gateway.http.close()
    sweeper.cancel()
    history_sweeper.cancel()
    if snapshots is not None:
        snapshots.cancel()
        hostmetrics.write_snapshot(collector)       # the final counters, for the supervisor
    log.info("stopped")
    return 0


def reload_from_file(gateway) -> bool:
    try:
        new = load_config(gateway.config_path)
        gateway.reload(new)
    except (ConfigError, AuthSetupError) as exc:
        log.error("reload rejected, keeping the running configuration: %s", exc)
        return False
    logs.apply(new.gateway.log)
    return True


def run(config_path: str, log_level: str | None = None, log_format: str | None = None) -> int:
    """`wsprism start`: `log_level`/`log_format` from the command line win over `gateway.log`."""
    logs.start(log_format, log_level)
    config = load_config(config_path)
    logs.apply(config.gateway.log)
    worker = WorkerInfo.from_env()
    if worker is not None:
        logs.tag_worker(worker.index)
    elif config.gateway.workers > 1:
        log.info("wsprism %s: supervising %d workers", __version__, config.gateway.workers)
        return supervise(config, config_path, log_level, log_format)
    install_loop()
    log.info("wsprism %s (compiled fast path %s)", __version__, "active" if USING_EXTENSIONS else "inactive")
    gcfreeze.enable()       # the process is ours: keep the collector's full passes off the sessions
    return asyncio.run(serve(config, config_path, worker=worker,
                             ready=lambda gateway, server: gcfreeze.startup()))
