"""Redis' own cost of history with a broker (docs/benchmarks.md, "History with a broker"):
a redis-server started here; `python benches/history_redis_costs.py` from the repo root.

- hist_publish.lua with 1 and with 16 messages per script (INFO commandstats: EVALSHA
  usec_per_call), 20k messages of ~230 B into 100 rooms (size 100);
- Redis memory for 1000 rooms x 100 such messages (INFO memory used_memory);
- the join's read (MULTI/EXEC: HSETNX x2, PEXPIRE, HMGET, XRANGE of 100, TIME), 2000 of
  them: Redis CPU per read (INFO cpu, user + sys, over the batch) and XRANGE's own
  usec_per_call.
"""
import re, socket, sys, time
sys.path.insert(0, '.')
import hiredis
from tests.redisproc import RedisProc
from wsprism.broker.scripts import SCRIPTS

r = RedisProc()
try:
    s = socket.create_connection(("127.0.0.1", r.port)); rd = hiredis.Reader()
    def call(*a):
        s.sendall(hiredis.pack_command(a))
        while True:
            rd.feed(s.recv(1 << 20)); x = rd.gets()
            if x is not False: return x
    def pipe(cmds):
        for k in range(0, len(cmds), 100):
            chunk = cmds[k:k + 100]
            s.sendall(b"".join(chunk)); got = 0
            while got < len(chunk):
                rd.feed(s.recv(1 << 20))
                while rd.gets() is not False: got += 1
    def usec():
        line = [l for l in call("INFO", "commandstats").decode().splitlines() if l.startswith("cmdstat_evalsha")][0]
        return float(line.split("usec_per_call=")[1].split(",")[0])
    def cpu():
        info = call("INFO", "cpu").decode()
        return sum(float(l.split(":")[1]) for l in info.splitlines() if l.startswith(("used_cpu_sys:", "used_cpu_user:")))
    def used():
        return int([l for l in call("INFO", "memory").decode().splitlines() if l.startswith("used_memory:")][0].split(":")[1])
    for sc in SCRIPTS.values(): call("SCRIPT", "LOAD", sc.source)
    head = b'{"v":1,"svc":"chat","type":"msg","room":"r"'; tail = b',"data":{"from":"a","msg":"' + b'x' * 120 + b'"}}'
    pub = lambda room, batch: hiredis.pack_command(("EVALSHA", SCRIPTS["hist_publish"].sha, 0, "p:{t}:", room, 100, 300000,
                                                    86400000, "EPOCHxxxxxxx", "n" * 12, batch, *[head, tail] * batch))
    for batch in (1, 16):
        call("CONFIG", "RESETSTAT")
        pipe([pub(f"r{i % 100}", batch) for i in range(20000 // batch)])
        u = usec(); print(f"hist_publish, {batch} message(s) per script: {u:.1f} µs per script, {u / batch:.1f} µs per message")
    call("FLUSHALL"); m0 = used()
    pipe([pub(f"room{i % 1000}", 1) for i in range(100_000)])
    m1 = used()
    print(f"Redis memory, 1000 rooms x 100 messages of {len(head) + len(tail) + 37} B: {(m1 - m0) / 2**20:.1f} MiB ({(m1 - m0) / 1e5:.0f} B per message)")
    call("CONFIG", "RESETSTAT")
    cmds = []
    for i in range(2000):
        mk, sk = f"p:{{t}}:hm:room{i % 1000}", f"p:{{t}}:hs:room{i % 1000}"
        for c in (("MULTI",), ("HSETNX", mk, "e", "E"), ("HSETNX", mk, "s", 0), ("PEXPIRE", mk, 86400000),
                  ("HMGET", mk, "e", "s"), ("XRANGE", sk, "1-0", "+", "COUNT", 100), ("TIME",), ("EXEC",)):
            cmds.append(hiredis.pack_command(c))
    c0 = cpu()
    pipe(cmds)
    c1 = cpu()
    st = call("INFO", "commandstats").decode()
    total = (c1 - c0) * 1e6
    xr = [l for l in st.splitlines() if l.startswith("cmdstat_xrange")][0]
    print(f"the read (MULTI/EXEC of HSETNX x2, PEXPIRE, HMGET, XRANGE 100, TIME): {total / 2000:.1f} µs of Redis CPU per read"
          f" (XRANGE {xr.split('usec_per_call=')[1].split(',')[0]} µs)")
finally:
    r.stop()
