"""`wsprism start | check | version | bench` (SPEC section 12). Exit codes: 0 ok, 2 bad config or usage."""
import argparse
import sys

from . import __version__

EXIT_OK = 0
EXIT_BAD = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsprism", description="wsPrism realtime WebSocket gateway")
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run the gateway")
    start.add_argument("--config", default="wsprism.yaml", help="path to wsprism.yaml")
    start.add_argument("--log-level", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="threshold (default: gateway.log.level, else INFO)")
    start.add_argument("--log-format", choices=["text", "json"],
                       help="text or JSON lines (default: gateway.log.format, else text)")
    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("--config", default="wsprism.yaml")
    check.add_argument("--strict", action="store_true", help="also refuse auth.mode dev")
    sub.add_parser("version", help="print the version and whether the compiled path is active")
    sub.add_parser("bench", help="the bundled load generator (wsprism bench --help)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from .loadgen import main as bench_main

        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "version":
        from ._fast import USING_EXTENSIONS

        print(f"wsprism {__version__} (compiled fast path: {'active' if USING_EXTENSIONS else 'inactive'})")
        return EXIT_OK
    if args.command == "check":
        return _check(args.config, args.strict)
    return _start(args.config, args.log_level, args.log_format)


def _fail(msg: str) -> int:
    print(f"wsprism: {msg}", file=sys.stderr)
    return EXIT_BAD


def _check(path: str, strict: bool) -> int:
    from .auth import AuthSetupError, make_authenticator
    from .config import ConfigError, load_config
    from .services.python import service_class

    try:
        cfg = load_config(path)
        for i, tenant in enumerate(cfg.tenants):
            make_authenticator(tenant.auth)
            for name, svc in tenant.services.items():
                if svc.python is not None:       # imported and checked, not built
                    service_class(f"tenants[{i}].services.{name}", svc)
    except ConfigError as exc:
        return _fail(f"invalid config {path}: {exc}")
    except AuthSetupError as exc:
        return _fail(f"invalid config {path}: auth: {exc}")
    if strict:
        dev = [t.id for t in cfg.tenants if t.auth.mode == "dev"]
        if dev:
            return _fail(f"--strict: tenants[{', '.join(dev)}] use auth.mode dev (for local use only)")
    print(f"{path}: ok ({len(cfg.tenants)} tenants)")
    return EXIT_OK


def _start(path: str, log_level: str | None, log_format: str | None) -> int:
    from .app import run
    from .auth import AuthSetupError
    from .config import ConfigError
    from .gateway import StartupError

    try:
        return run(path, log_level, log_format)
    except ConfigError as exc:
        return _fail(f"invalid config {path}: {exc}")
    except AuthSetupError as exc:
        return _fail(f"invalid config {path}: auth: {exc}")
    except (OSError, StartupError) as exc:
        return _fail(f"cannot start: {exc}")
    except KeyboardInterrupt:
        return EXIT_OK
