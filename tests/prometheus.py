"""A real Prometheus server (Debian's `prometheus` package) scraping gateways on 127.0.0.1.

Used by tests/integration/test_dashboard.py and scripts/render_dashboard.py. The binaries
come from the system (`scripts/test.sh` installs the package where it is missing); a
missing binary is an error, never a skip.
"""
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: install Debian's prometheus package "
                           "(apt-get install prometheus; scripts/test.sh does this)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """`prometheus` on a free port, scraping `targets` (host:port) every `interval` seconds
    as job `wsprism`; its data lives in a temporary directory removed by `stop`."""

    def __init__(self, targets: list[str], interval: float = 1.0, metrics_path: str = "/metrics",
                 extra_args: tuple = ()) -> None:
        self.dir = tempfile.mkdtemp(prefix="wsprism-prom-")
        self.port = _free_port()
        cfg = {
            "global": {"scrape_interval": f"{round(interval * 1000)}ms",
                       "evaluation_interval": f"{round(interval * 1000)}ms"},
            "scrape_configs": [{"job_name": "wsprism", "metrics_path": metrics_path,
                                "static_configs": [{"targets": targets}]}],
        }
        with open(f"{self.dir}/prometheus.yml", "w") as fh:
            json.dump(cfg, fh)          # JSON is YAML
        self.log = open(f"{self.dir}/prometheus.log", "w")
        self.proc = subprocess.Popen(
            [binary("prometheus"), f"--config.file={self.dir}/prometheus.yml",
             f"--storage.tsdb.path={self.dir}/data", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn", *extra_args],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                with open(self.log.name) as fh:
                    out = fh.read()[-2000:]
                self.stop()
                raise RuntimeError(f"prometheus did not start: {out}")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params) -> dict:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{q}", timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list:
        params = {"query": expr}
        if at is not None:
            params["time"] = str(at)
        return self.api("query", **params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list:
        return self.api("query_range", query=expr, start=str(start), end=str(end), step=str(step))["result"]

    def wait_for_scrapes(self, n: int, timeout: float = 30) -> None:
        """Until every target has been scraped successfully at least `n` times."""
        deadline = time.monotonic() + timeout
        while True:
            res = self.query("min(count_over_time(up[1h]))")
            up = self.query("min(up)")
            if res and up and float(res[0]["value"][1]) >= n and float(up[0]["value"][1]) == 1:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus scraped too little: {res} {up}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
