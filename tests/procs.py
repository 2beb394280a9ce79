"""Processes a test starts and must stop (`wsprism start` gateways, supervisors)."""


def spawner(cls, tmp_path, prefix: str):
    """A fixture's body: `start(*args, **kw)` makes `cls(tmp_path, name, *args, **kw)`
    (a process, named prefix0, prefix1, ...); each is stopped when the test ends."""
    started = []

    def start(*args, **kw):
        proc = cls(tmp_path, f"{prefix}{len(started)}", *args, **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
