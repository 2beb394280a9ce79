"""The Lua scripts (broker/lua/*.lua): each admission is one atomic step in Redis.

Each script is the shared prelude (`prelude.lua`) plus its own body, loaded with
SCRIPT LOAD on every (re)connect, since a Redis restarted empty has forgotten them, and
run with EVALSHA. The scripts derive every key from their arguments (broker/keys.py).
"""
import hashlib
from importlib.resources import files

NAMES = (
    "admit", "unadmit", "join", "leave", "renew", "dead_nodes", "reap", "forget_node",
    "presence", "stats", "to_user", "room_nodes",
)


class Script:
    __slots__ = ("name", "source", "sha")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


def load_all() -> dict[str, Script]:
    lua = files("wsprism.broker").joinpath("lua")
    prelude = lua.joinpath("prelude.lua").read_text()
    return {name: Script(name, prelude + "\n" + lua.joinpath(f"{name}.lua").read_text()) for name in NAMES}


SCRIPTS = load_all()
