"""The Redis broker against a real redis-server: scripts, links, faults, leases.

Brokers run in the test's own event loop (several nodes at once) or, where a node must
die or race another, in their own processes (tests/broker_node.py).
"""
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import hiredis
import pytest

from tests.redisproc import SilentRedis
from wsprism.broker import RedisBroker
from wsprism.broker.wire import HOT, RELIABLE
from wsprism.config.schema import BrokerConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_prefixes = iter(range(10**6))


def prefix() -> str:
    return f"t{os.getpid()}x{next(_prefixes)}"


class Limits:
    def __init__(self, users=0, rooms=0, user_rooms=0) -> None:
        self.max_users_per_room = users
        self.max_rooms_total = rooms
        self.max_rooms_per_user = user_rooms


class Host:
    """Records what the broker hands to the gateway."""

    def __init__(self, tenants=("acme",)) -> None:
        self.tenants = list(tenants)
        self.frames: list = []
        self.presence: list = []
        self.kicks: list = []
        self.to_user: list = []
        self.resyncs: list = []

    def broker_tenants(self):
        return self.tenants

    def presence_events(self, tenant_id):
        return True

    def on_room_frames(self, target, frames, count, lossy):
        self.frames.append((target, frames, count, lossy))

    def on_presence(self, target, joined, user):
        self.presence.append((target, joined, user))

    def on_kick(self, *args):
        self.kicks.append(args)

    def on_user_frame(self, *args):
        self.to_user.append(args)

    def on_disconnect_user(self, *args):
        self.to_user.append(("disconnect",) + args)

    async def resync(self, broker, fresh):
        self.resyncs.append(fresh)


def run(coro):
    import uvloop

    return uvloop.run(asyncio.wait_for(coro, 60))


async def wait_for(pred, timeout=5.0, step=0.01, what=None):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in time {what if what is not None else ''}")
        await asyncio.sleep(step)
    return time.monotonic()


def node(url, host=None, pfx=None, **kw):
    cfg = BrokerConfig(url=url, prefix=pfx or prefix(), lease_ms=kw.pop("lease_ms", 5000))
    b = RedisBroker(cfg, host or Host(), **kw)
    b.start()
    return b


# -- scripts ------------------------------------------------------------------------------

def test_session_admission_replace_deny_kick_oldest_and_total(redis_server):
    async def main():
        pfx = prefix()
        a, b = node(redis_server.url, pfx=pfx), node(redis_server.url, Host(), pfx=pfx)
        await wait_for(lambda: a.up and b.up)
        # kick_oldest, limit 3: each admission past 3 kicks the oldest, on whichever node
        seqs = []
        for i in range(5):
            r = await (a if i % 2 else b).admit("acme", "u", f"s{i}", 3, True, 0)
            assert r.status == "ok"
            seqs.append(r.seq)
            if i >= 3:
                assert [(k[1], k[3]) for k in r.kicks] == [(f"s{i - 3}", "K")]
        assert redis_server.cmd("ZRANGE", f"{pfx}:{{acme}}:u:u", "0", "-1") == ["s2", "s3", "s4"]
        # the kick reached the node that held the session (b held s0; a admitted s3)
        await wait_for(lambda: any(k[2] == "s0" for k in b.host.kicks))
        # deny: the user is at 3
        assert (await a.admit("acme", "u", "s9", 3, False, 0)).status == "deny"
        # same sid replaces (never denied, never counts twice), whichever node had it
        r = await a.admit("acme", "u", "s4", 3, False, 0)
        assert r.status == "ok" and [(k[0], k[1], k[3]) for k in r.kicks] == [(b.node, "s4", "R")]
        # max_sessions_total counts every user of the tenant
        assert (await a.admit("acme", "v", "x", 3, False, 4)).status == "ok"
        assert (await a.admit("acme", "w", "x", 3, False, 4)).status == "full"
        assert (await b.tenant_stats("acme")) == (4, 0, 2)
        # unadmit removes only the entry with that seq
        assert a.unadmit("acme", "u", "s4", seqs[4])          # stale seq (s4 was replaced)
        await asyncio.sleep(0.05)
        assert (await b.tenant_stats("acme"))[0] == 4
        assert a.unadmit("acme", "u", "s4", r.seq)
        await asyncio.sleep(0.05)
        assert (await b.tenant_stats("acme"))[0] == 3
        await a.close()
        await b.close()

    run(main())


def test_room_caps_count_distinct_users_and_rooms(redis_server):
    async def main():
        a, b = node(redis_server.url), None
        pfx = a.keys.prefix
        b = node(redis_server.url, pfx=pfx)
        await wait_for(lambda: a.up and b.up)
        lim = Limits(users=2, rooms=2, user_rooms=2)
        assert await a.join("acme", "alice", "r1", lim, False) == (True, True)
        # alice again from another node: not a new user, never refused
        assert await b.join("acme", "alice", "r1", lim, False) == (True, False)
        assert await b.join("acme", "bob", "r1", lim, False) == (True, True)
        assert await a.join("acme", "carol", "r1", lim, False) == (False, "max_users_per_room")
        assert await a.join("acme", "carol", "r2", lim, False) == (True, True)
        assert await a.join("acme", "carol", "r3", lim, False) == (False, "max_rooms_total")
        assert await a.join("acme", "alice", "r2", lim, False) == (True, True)
        # alice is in r1 and r2 (two distinct rooms over both nodes)
        assert await a.join("acme", "bob", "r2", lim, False) == (False, "max_users_per_room")
        assert await b.presence("acme", "r1", 10) == (2, ["alice", "bob"]) or \
            (await b.presence("acme", "r1", 10))[0] == 2
        # leaving on one node keeps the user in the room while the other node has them
        assert a.leave("acme", "alice", "r1", False)
        await asyncio.sleep(0.05)
        count, users = await b.presence("acme", "r1", 10)
        assert count == 2 and set(users) == {"alice", "bob"}
        b.leave("acme", "alice", "r1", False)
        b.leave("acme", "bob", "r1", False)
        await asyncio.sleep(0.05)
        # the empty room is gone and stops counting toward max_rooms_total
        assert await a.join("acme", "dave", "r3", lim, False) == (True, True)
        assert (await a.tenant_stats("acme"))[1] == 2
        count, users = await a.presence("acme", "r9", 10)
        assert (count, users) == (0, [])
        await a.close()
        await b.close()

    run(main())


def test_presence_count_exact_users_capped(redis_server):
    async def main():
        a = node(redis_server.url)
        await wait_for(lambda: a.up)
        await asyncio.gather(*(a.join("acme", f"user{i}", "big", Limits(), False) for i in range(1500)))
        count, users = await a.presence("acme", "big", 1000)
        assert count == 1500 and len(users) == 1000 and len(set(users)) == 1000
        await a.close()

    run(main())


def test_scripts_sent_without_waiting_survive_a_script_flush(redis_factory):
    """SCRIPT FLUSH (an operator, a failover to a replica without the scripts): leave,
    unadmit and to_user, sent without awaiting, answer NOSCRIPT; the broker loads the
    scripts again and sends them from source, so Redis still reflects them."""
    r = redis_factory()

    async def main():
        a = node(r.url)
        await wait_for(lambda: a.up)
        pfx = a.keys.prefix
        lim = Limits()
        assert await a.join("acme", "alice", "r1", lim, False) == (True, True)
        assert await a.join("acme", "bob", "r1", lim, False) == (True, True)
        s = await a.admit("acme", "carol", "s1", 3, False, 0)
        assert r.cmd("SCRIPT", "FLUSH") == "OK"
        assert a.leave("acme", "alice", "r1", False)
        assert a.unadmit("acme", "carol", "s1", s.seq)
        await wait_for(lambda: r.cmd("HEXISTS", f"{pfx}:{{acme}}:r:r1", "alice") == 0, what="leave")
        await wait_for(lambda: r.cmd("ZCARD", f"{pfx}:{{acme}}:u:carol") == 0, what="unadmit")
        assert r.cmd("SCRIPT", "FLUSH") == "OK"
        assert await a.leave_answered("acme", "bob", "r1", False) == 2     # in the room on no node now
        assert r.cmd("HLEN", f"{pfx}:{{acme}}:r:r1") == 0
        assert a.cmd.errors == 0 and a.up
        await a.close()

    run(main())


def test_any_tenant_room_and_user_bytes_stay_in_their_keys(redis_server):
    """Room names may hold `:` `@` `.` `-`, user ids anything (spaces, braces, newlines,
    non-ASCII): keys and channels read back one way, nothing collides."""
    async def main():
        users = ["a b", "{x}", "c\nd", "ü:ñ", "x" * 256, " ", "a:b c"]
        tenants = ["a.b-c_d", "a", "a.b"]
        h = Host(tenants)
        a = node(redis_server.url, h)
        await wait_for(lambda: a.up)
        for t in tenants:
            for i, u in enumerate(users):
                assert (await a.admit(t, u, f"s:{i}.x-y_z", 1, False, 0)).status == "ok"
                assert await a.join(t, u, "m:1@x.y-z_w", Limits(users=len(users)), False) == (True, True)
        for t in tenants:
            count, got = await a.presence(t, "m:1@x.y-z_w", 100)
            assert count == len(users) and set(got) == set(users)
            assert await a.tenant_stats(t) == (len(users), 1, len(users))
            sessions = await a.node_sessions(t)
            assert set(sessions) == {(u, f"s:{i}.x-y_z") for i, u in enumerate(users)}
            members = await a.node_memberships(t)
            assert members == {("m:1@x.y-z_w", u) for u in users}
        await a.close()

    run(main())


# -- cross-node messages --------------------------------------------------------------------

def test_frames_packed_per_room_per_turn_and_own_skipped(redis_server):
    async def main():
        pfx = prefix()
        ha, hb = Host(), Host()
        a, b = node(redis_server.url, ha, pfx), node(redis_server.url, hb, pfx)
        await wait_for(lambda: a.up and b.up)
        ch = a.room_channel("acme", "r")
        a.retain(ch, ("acme", "r"))
        b.retain(ch, ("acme", "r"))
        b.retain(ch, ("acme", "r"))        # refcounted: one SUBSCRIBE
        await asyncio.sleep(0.05)
        assert redis_server.cmd("PUBSUB", "NUMSUB", ch.decode())[1] == 2
        for i in range(16):
            assert a.publish(ch, b"\x81\x01" + bytes([48 + i % 10]), False)
        for i in range(8):
            assert a.publish(ch, b"\x82\x01" + bytes([i]), True)
        await wait_for(lambda: len(hb.frames) == 2)
        (t1, f1, n1, lossy1), (t2, f2, n2, lossy2) = hb.frames
        assert (t1, n1, lossy1, len(f1)) == (("acme", "r"), 16, False, 48)
        assert f1 == b"".join(b"\x81\x01" + bytes([48 + i % 10]) for i in range(16))   # order kept
        assert (n2, lossy2) == (8, True)
        assert ha.frames == []                                    # a does not get its own
        assert a.stats.published == [1, 1] and a.stats.published_frames == [16, 8]
        assert b.stats.received_frames == [16, 8]
        # release: the channel lingers, then goes
        b.release(ch)
        b.release(ch)
        await asyncio.sleep(0.05)
        assert redis_server.cmd("PUBSUB", "NUMSUB", ch.decode())[1] == 2
        await wait_for(lambda: redis_server.cmd("PUBSUB", "NUMSUB", ch.decode())[1] == 1, timeout=3)
        # never a pattern subscription
        assert redis_server.cmd("PUBSUB", "NUMPAT") == 0
        await a.close()
        await b.close()

    run(main())


def test_many_rooms_subscribe_in_batches(redis_server):
    async def main():
        a = node(redis_server.url)
        await wait_for(lambda: a.up)
        for i in range(3000):
            a.retain(a.room_channel("acme", f"room{i}"), ("acme", f"room{i}"))
        await asyncio.sleep(0.2)
        info = redis_server.cmd("CLIENT", "LIST")
        sub = [line for line in info.splitlines() if f"wsprism:{a.node}:sub" in line][0]
        assert " sub=3001 " in sub and " psub=0 " in sub
        await a.close()

    run(main())


# -- faults -------------------------------------------------------------------------------------

def test_unreachable_at_start_runs_local_only_and_says_so_once(caplog):
    from tests.redisproc import RedisProc, free_port

    port = free_port()

    async def main():
        caplog.set_level(logging.INFO, "wsprism.broker")
        a = node(f"redis://127.0.0.1:{port}/0")
        await asyncio.sleep(1.5)
        assert not a.up
        assert not a.publish(a.room_channel("acme", "r"), b"\x81\x00", True)
        assert a.stats.dropped[("hot", "down")] == 1
        lines = [r for r in caplog.records if r.name == "wsprism.broker"]
        assert len(lines) == 1 and "unreachable at start" in lines[0].getMessage()
        proc = RedisProc(port)
        try:
            await wait_for(lambda: a.up, timeout=4)
            assert a.host.resyncs == [True]
            lines = [r.getMessage() for r in caplog.records if r.name == "wsprism.broker"]
            assert len(lines) == 2 and "broker up" in lines[1]
            await a.close()
        finally:
            proc.stop()

    run(main())


def test_redis_killed_and_restarted_empty(redis_factory, caplog):
    """SIGKILL, then a Redis with nothing in it: down in well under 2 s, up again
    within 3 s of the restart, subscriptions back from the local table, the node
    registered again (resync with fresh=True)."""
    r = redis_factory()

    async def main():
        caplog.set_level(logging.INFO, "wsprism.broker")
        pfx = prefix()
        ha, hb = Host(), Host()
        a, b = node(r.url, ha, pfx), node(r.url, hb, pfx)
        await wait_for(lambda: a.up and b.up)
        ch = a.room_channel("acme", "r")
        b.retain(ch, ("acme", "r"))
        await asyncio.sleep(0.05)
        busy = True

        async def traffic():
            while busy:
                a.publish(ch, b"\x82\x01x", True)
                await asyncio.sleep(0.001)

        t = asyncio.get_running_loop().create_task(traffic())
        await asyncio.sleep(0.2)
        r.kill()
        t0 = time.monotonic()
        await wait_for(lambda: not a.up and not b.up, timeout=2)
        down = time.monotonic() - t0
        r.start()
        t1 = time.monotonic()
        await wait_for(lambda: a.up and b.up, timeout=3)
        resumed = time.monotonic() - t1
        n = len(hb.frames)
        await wait_for(lambda: len(hb.frames) > n, timeout=2)      # delivery resumed
        busy = False
        await t
        assert ha.resyncs == [True, True] and hb.resyncs == [True, True]
        assert a.fresh_registrations == 2
        assert a.stats.dropped[("hot", "down")] > 0
        downs = [x for x in caplog.records if "broker down" in x.getMessage()]
        ups = [x for x in caplog.records if "broker up again" in x.getMessage()]
        assert len(downs) == 2 and len(ups) == 2          # one line per change, per node
        assert a.stats.link_lost[("command", "closed")] + a.stats.link_lost[("subscriber", "closed")] >= 1
        print(f"down after {down:.3f}s, up {resumed:.3f}s after restart")
        await a.close()
        await b.close()

    run(main())


def test_redis_that_accepts_but_never_answers(caplog):
    silent = SilentRedis()

    async def main():
        caplog.set_level(logging.INFO, "wsprism.broker")
        a = node(silent.url)
        await asyncio.sleep(2.5)
        assert not a.up
        msgs = [x.getMessage() for x in caplog.records if x.name == "wsprism.broker"]
        assert len(msgs) == 1 and "unreachable at start" in msgs[0]
        await a.close()

    try:
        run(main())
    finally:
        silent.stop()


def test_redis_that_stops_answering_mid_way(redis_factory):
    """SIGSTOP: the socket stays open, nothing answers. Owed replies time out, the link
    is dropped, an admission fails fast instead of hanging; SIGCONT brings it back."""
    r = redis_factory()

    async def main():
        a = node(r.url, command_timeout=0.5)
        await wait_for(lambda: a.up)
        os.kill(r.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises((asyncio.TimeoutError, Exception)):
                await a.admit("acme", "u", "s", 1, False, 0)
            assert time.monotonic() - t0 < 1.0
            await wait_for(lambda: not a.up, timeout=3)
            assert a.stats.link_lost[("command", "timeout")] + a.stats.link_lost[("subscriber", "timeout")] >= 1
        finally:
            os.kill(r.proc.pid, signal.SIGCONT)
        await wait_for(lambda: a.up, timeout=5)
        assert (await a.admit("acme", "u", "s", 1, False, 0)).status == "ok"
        await a.close()

    run(main())


def test_subscriber_evicted_for_falling_behind_is_counted_and_logged(redis_factory, caplog):
    r = redis_factory("--client-output-buffer-limit", "pubsub", "256kb", "64kb", "1")

    async def main():
        caplog.set_level(logging.WARNING, "wsprism.broker")
        b = node(r.url)
        await wait_for(lambda: b.up)
        ch = b.room_channel("acme", "r")
        b.retain(ch, ("acme", "r"))
        await asyncio.sleep(0.1)

        def flood():
            import socket

            payload = b"R" + b"0" * 12 + (1).to_bytes(4, "little") + b"x" * 2000
            cmd = hiredis.pack_command(("PUBLISH", ch, payload)) * 200
            with socket.create_connection(("127.0.0.1", r.port)) as s:
                for _ in range(100):
                    s.sendall(cmd)

        th = threading.Thread(target=flood)
        th.start()
        time.sleep(1.5)            # this node's loop is stuck: Redis buffers, then evicts
        th.join()
        await wait_for(lambda: b.stats.link_lost[("subscriber", "evicted")] == 1, timeout=3, what=b.stats.link_lost)
        assert any("fell behind" in x.getMessage() for x in caplog.records)
        await wait_for(lambda: b.up, timeout=3)
        await b.close()

    run(main())


def test_silently_unsubscribed_subscriber_is_caught_by_the_probe(redis_server, caplog):
    async def main():
        caplog.set_level(logging.WARNING, "wsprism.broker")
        h = Host()
        a, b = node(redis_server.url, pfx="p" + prefix(), probe_interval=0.3), None
        pfx = a.keys.prefix
        b = node(redis_server.url, h, pfx=pfx)
        await wait_for(lambda: a.up and b.up)
        ch = a.room_channel("acme", "r")
        a.retain(ch, ("acme", "r"))
        await wait_for(lambda: redis_server.cmd("PUBSUB", "NUMSUB", ch.decode())[1] == 1, timeout=3)
        # the server forgets a's subscriptions without closing anything
        from wsprism.broker.resp import pack_command

        a.sub.write(pack_command((b"UNSUBSCRIBE",)))
        await wait_for(lambda: a.stats.link_lost[("subscriber", "probe")] == 1, timeout=3)
        assert any("probe did not come back" in x.getMessage() for x in caplog.records)
        await wait_for(lambda: a.up, timeout=3)
        # resubscribed (on a loaded host the SUBSCRIBE may take more than a turn or two)
        await wait_for(lambda: redis_server.cmd("PUBSUB", "NUMSUB", ch.decode())[1] == 1, timeout=3)
        await a.close()
        await b.close()

    run(main())


# -- several processes ------------------------------------------------------------------------

def spawn_node(*args):
    return subprocess.Popen([sys.executable, "-m", "tests.broker_node", *args], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def answers(procs):
    """Every node's answer; the nodes stay registered until `release` (a node gone
    while another still admits would stop counting, and be reaped)."""
    return [json.loads(p.stdout.readline()) for p in procs]


def release(procs, timeout=60):
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err


def test_two_processes_500_joins_each_into_a_room_capped_at_100(redis_server):
    pfx = prefix()
    start = str(time.time() + 1.5)
    procs = [spawn_node(redis_server.url, pfx, "joins", "arena", "500", "100", start) for _ in range(2)]
    results = answers(procs)
    ok = [u for r in results for u in r["ok"]]
    refused = [w for r in results for w in r["refused"]]
    assert len(ok) == 100 and len(refused) == 900
    assert set(refused) == {"max_users_per_room"}
    assert redis_server.cmd("HLEN", f"{pfx}:{{acme}}:r:arena") == 100
    release(procs)
    print("admitted per process:", [len(r["ok"]) for r in results])


def test_two_nodes_500_joins_each_exactly_100_in_100_rounds(redis_server):
    """The same race a hundred times (two links, interleaved bursts): never 99, never 101."""
    async def main():
        pfx = prefix()
        a, b = node(redis_server.url, pfx=pfx), node(redis_server.url, pfx=pfx)
        await wait_for(lambda: a.up and b.up)
        lim = Limits(users=100)
        for rnd in range(100):
            room = f"arena{rnd}"

            async def joins(n, tag):
                out = []
                for k in range(0, 500, 50):
                    out += await asyncio.gather(*(n.join("acme", f"{tag}{i}", room, lim, False)
                                                  for i in range(k, k + 50)))
                return out

            ra, rb = await asyncio.gather(joins(a, "a"), joins(b, "b"))
            assert sum(ok for ok, _ in ra + rb) == 100, rnd
        await a.close()
        await b.close()

    run(main())


def test_two_processes_200_connects_each_of_one_user_limit_3_kick_oldest(redis_server):
    pfx = prefix()
    start = str(time.time() + 1.5)
    procs = [spawn_node(redis_server.url, pfx, "admits", "alice", "200", "3", start) for _ in range(2)]
    results = answers(procs)
    admitted = [(sid, seq) for r in results for sid, seq, _ in r["ok"]]
    assert len(admitted) == 400 and sum(r["refused"] for r in results) == 0
    kicked = {k[1] for r in results for _, _, kicks in r["ok"] for k in kicks}
    newest = {sid for sid, _ in sorted(admitted, key=lambda x: x[1])[-3:]}
    survivors = set(redis_server.cmd("ZRANGE", f"{pfx}:{{acme}}:u:alice", "0", "-1"))
    assert survivors == newest                                  # exactly the 3 newest
    assert kicked == {sid for sid, _ in admitted} - newest      # every other one kicked once
    assert sum(len(kicks) for r in results for _, _, kicks in r["ok"]) == 397
    assert redis_server.cmd("GET", f"{pfx}:{{acme}}:n") == "3"
    release(procs)


def test_killed_node_is_reaped_and_its_users_leave_within_two_leases(redis_server):
    pfx = prefix()

    async def main():
        h = Host()
        b = node(redis_server.url, h, pfx, lease_ms=1000)
        await wait_for(lambda: b.up)
        ch = b.room_channel("acme", "lobby")
        b.retain(ch, ("acme", "lobby"))
        await b.admit("acme", "zoe", "z1", 1, False, 0)
        await b.join("acme", "zoe", "lobby", Limits(), True)
        proc = spawn_node(redis_server.url, pfx, "member", "lobby", "amy", "zoe")
        line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
        dead = json.loads(line)["node"]
        assert (await b.presence("acme", "lobby", 10))[0] == 2
        assert (await b.tenant_stats("acme"))[0] == 3
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=5)
        t0 = time.monotonic()
        await wait_for(lambda: ((ch.decode() and ("acme", "lobby"), False, "amy") in h.presence), timeout=2.5)
        took = time.monotonic() - t0
        assert took < 2.0                                   # 2 x the 1 s lease
        # zoe is still here (on b): no user_left for her
        assert (("acme", "lobby"), False, "zoe") not in h.presence
        assert await b.presence("acme", "lobby", 10) == (1, ["zoe"])
        assert (await b.tenant_stats("acme")) == (1, 1, 1)
        assert redis_server.cmd("ZSCORE", f"{pfx}:nodes", dead) is None
        assert b.stats.reaped == 1
        # the dead node's session of zoe no longer counts: limit 1 deny admits a new one
        # was b's own: still there; a fresh user whose only session died is never refused
        assert (await b.admit("acme", "amy", "new", 1, False, 0)).status == "ok"
        print(f"user_left {took:.2f}s after SIGKILL (lease 1 s)")
        await b.close()

    run(main())


def test_ghost_session_of_a_dead_node_never_refuses_a_reconnect(redis_server):
    """Before the reaper has run: the admission script itself ignores sessions of nodes
    whose lease ran out, so a user with limit 1 (deny) reconnects at once."""
    pfx = prefix()

    async def main():
        b = node(redis_server.url, pfx=pfx, lease_ms=1000)
        await wait_for(lambda: b.up)
        proc = spawn_node(redis_server.url, pfx, "member", "lobby", "amy")
        await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
        assert (await b.admit("acme", "amy", "other", 1, False, 0)).status == "deny"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=5)
        await asyncio.sleep(1.1)          # its lease has run out; no reaper step needed
        b._busy.add("reap")               # keep our reaper out of it
        assert (await b.admit("acme", "amy", "other", 1, False, 0)).status == "ok"
        await b.close()

    run(main())
