"""Room history with a broker (SPEC 11 + 13): one tenant's history in Redis streams,
shared by every node. Implements core/history.py's `Store` for the tenant; the broker
(broker/redis.py `publish_numbered`, `history_read`; lua/hist_publish.lua) carries it.

Publishing. `publish` hands the encoded message (without its position) to the broker,
which sends every history message of one room in one loop turn in one script: it takes
the next offsets from the room's meta (`hm:<room>`: epoch, top), appends each message
to the room's stream (`hs:<room>`, entry id = offset, MAXLEN size, the stream expiring
ttl_ms after its newest message), and PUBLISHes the positioned messages ('O') on the
room's channel. Nothing is delivered at the publish: every node with members in the
room, this one included, delivers them from its feed, so every node sees the room in
offset order (Redis runs the script whole, and one subscriber link keeps the order).
The cost: the publisher's own members get a message one Redis round trip later (about
0.1-0.3 ms on a LAN) than without history; in exchange a node has one ordered source per
room and a gap is a plain "offset is not newest + 1".

Feeds. Per room with members here, a `Feed` keeps the newest offset this node has
delivered to its live members (`last`) and the room's epoch. A numbered message is
delivered when its offset is `last + 1`; older ones are skipped (already delivered); a
newer one is a gap (missed while the subscriber link was down): it and what follows are
held while one read (`history_read`) fetches the missing offsets from the stream, then all
are delivered in order: the gap is repaired for every member here, nobody is
disconnected. A gap the stream no longer covers (trimmed by size or ttl) is delivered as
a jump in offsets and counted (`gaps` "lost"): a client that re-joins with `since`
hears `recovered: false`. On every reconnect of the broker each feed reads from its
`last` (the outage's gap, repaired the same way). A message with another epoch (the
room's meta was lost: a Redis restarted empty, or expired) restarts the feed there.

Joins. Every join of a history room is a replay (core/recovery.py `JoinRun`; the session
is joining, not live): the cursor reads the room's position and, with `since`, the
messages after it, in one MULTI/EXEC (a second read from the oldest held when `since`
is of another epoch or ahead). When this node already follows the room and `since`
is its newest offset (or there is no `since`), the cursor is done at once, no round
trip. While the read is on its way, the feed keeps delivering to the live members and
appends each delivered message to the cursor's tail; the read's messages and the tail,
merged by offset, cover everything up to the feed's newest: the session goes live in
the turn its cursor reaches the feed's `last` (each message once, in offset order).
The room's channel is subscribed (confirmed by Redis) before the join's script runs
(wsprism/cluster.py), so whatever is published after the read reaches the feed.

While the broker is down, a publish is delivered here at once, unnumbered (no offset,
not kept); other nodes never get it, and a client that missed it cannot recover it:
this is the outage window (scaling.md). So is one past the command link's backlog cap,
and one whose step Redis refused (-OOM, NOSCRIPT) or never answered (the link went);
the room's history then ends (a new epoch), at once when the link is up. A join answers from what the feed knows, and
with `since` `recovered: false` (outcome `unavailable`).

The meta outlives the messages: it expires `max(ttl_ms, META_TTL_MS)` after the room's
last publish or read, so a client that comes back to a quiet room recovers (nothing to
replay) and an epoch survives its messages expiring (centrifugo#230).
"""
import asyncio
from itertools import accumulate

from ._fast import OP_TEXT, broadcast, build_frame
from .broker import BrokerError
from .broker.wire import numbered_parts
from .core.history import (
    ABORTED, OTHER_EPOCH, OUTCOMES, RECOVERED, TRIMMED, U64_MAX, UNAVAILABLE, HistoryUnavailable, decide,
)

META_TTL_MS = 24 * 3600 * 1000   # a room's epoch and top are kept this long after its last use
PENDING_MAX = 100_000            # messages a feed holds while its gap is read (then it resets)


def read_answer(reply, ttl_ms: int) -> tuple[int, str, int, list]:
    """The answer of `RedisBroker.history_read` -> (top, epoch, first, messages): the
    messages held from offset `first` on (top + 1 when none), those older than ttl_ms
    left out (a prefix: the stream is in publish order). A stream's entries are
    consecutive offsets (appended one by one, trimmed from the oldest, deleted whole on a
    new epoch), so only the first id is read."""
    created, meta = reply[0], reply[3]
    epoch, top = meta[0].decode(), int(meta[1])
    if len(reply) < 6 or created or not reply[4]:     # a record made now holds nothing yet
        return top, epoch, top + 1, []
    entries, (sec, usec) = reply[4], reply[5]
    cutoff = int(sec) * 1000 + int(usec) // 1000 - ttl_ms
    k = 0
    for _, fields in entries:                   # fields: [b"t", ms, b"d", message]
        if int(fields[1]) > cutoff:
            break
        k += 1
    if k == len(entries):
        return top, epoch, top + 1, []
    first = int(entries[k][0].partition(b"-")[0])
    return top, epoch, first, [e[1][3] for e in (entries[k:] if k else entries)]


class Feed:
    """This node's view of one room's numbered messages."""

    __slots__ = ("room", "route", "last", "epoch", "pending", "repairing", "again", "cursors")

    def __init__(self, room: str) -> None:
        self.room = room
        self.route = None         # (channel, the history step's arguments), made at the first publish
        self.last = None          # newest offset delivered to the live members here (None: not yet known)
        self.epoch = None
        self.pending: dict = {}   # offset -> frame, held past a gap
        self.repairing = False    # a read of the gap is on its way
        self.again = False        # ... and another is wanted after it (a join read another epoch)
        self.cursors: set = set()  # joining sessions' cursors (they get what the feed delivers)


class RedisCursor:
    """A join's replay read from Redis (core/history.py `Cursor`)."""

    __slots__ = ("store", "feed", "since", "frames", "index", "upto", "epoch", "outcome", "ready", "wake",
                 "tail", "closed")

    def __init__(self, store, feed: Feed, since) -> None:
        self.store = store
        self.feed = feed
        self.since = since
        self.frames: list = []    # built frames still to hand out
        self.index = 0
        self.upto = 0             # the newest offset this cursor has (read or from the feed)
        self.epoch = ""
        self.outcome = RECOVERED
        self.ready = False        # the read answered (or was not needed)
        self.wake = None
        self.tail: list = []      # (offset, frame) the feed delivered before the read answered
        self.closed = False
        feed.cursors.add(self)

    @property
    def done(self) -> bool:
        if not self.ready or self.index < len(self.frames):
            return False
        # live only once the feed has caught up with what this cursor has: the read (on
        # the command link) can answer before the feed (the subscriber link) delivers the
        # same messages, and a session live at the read's top would get them twice
        feed = self.feed
        last = feed.last
        return last is None or (self.upto == last and self.epoch == feed.epoch)

    def take(self, max_bytes: int) -> list:
        frames, i = self.frames, self.index
        if i >= len(frames):
            return []
        out = frames[i:] if i else frames
        if sum(map(len, out)) > max_bytes:
            for k, nbytes in enumerate(accumulate(map(len, out))):
                if nbytes >= max_bytes:
                    out = out[:k + 1]
                    break
        j = i + len(out)
        if j >= len(frames):
            self.frames, self.index = [], 0
        else:
            self.index = j
        self.store.replayed += len(out)
        return out

    def park(self, wake) -> None:
        self.wake = wake

    def _wake(self) -> None:
        wake = self.wake
        if wake is not None:
            self.wake = None
            asyncio.get_running_loop().call_soon(wake)

    def finish(self) -> tuple[int, str, bool | None]:
        self._close()
        if self.since is None:
            return self.upto, self.epoch, None
        self.store.outcomes[self.outcome] += 1
        return self.upto, self.epoch, self.outcome == RECOVERED

    def abort(self) -> None:
        if not self.closed:
            self._close()
            if self.since is not None:
                self.store.outcomes[ABORTED] += 1

    def _close(self) -> None:
        self.closed = True
        self.feed.cursors.discard(self)
        self.wake = None

    # -- from the store -----------------------------------------------------------------
    def settle(self, upto: int, epoch: str, outcome: str) -> None:
        """No read needed (or possible): the session goes live at `upto`."""
        self.upto, self.epoch, self.outcome, self.ready = upto, epoch, outcome, True

    def answered(self, fut) -> None:
        """The read's answer: (top, epoch, offset, message, ...)."""
        if self.closed:
            return
        feed = self.feed
        if fut.cancelled() or fut.exception() is not None:
            self.settle(feed.last or 0, feed.epoch or "", UNAVAILABLE)
            self._merge_tail()
            self._wake()
            return
        top, epoch, first, messages = fut.result()
        self.store.adopt(feed, top, epoch)
        since = self.since
        if since is not None:
            _, self.outcome = decide(since.offset, since.epoch, epoch, top, first)
        self.frames.extend([build_frame(OP_TEXT, d) for d in messages])
        self.upto = top
        self.epoch = epoch
        self.ready = True
        self._merge_tail()
        self._wake()

    def _merge_tail(self) -> None:
        tail, self.tail = self.tail, []
        for k, entry in enumerate(tail):
            if entry[2] == self.epoch:
                tail = tail[k:]         # those before are of an epoch older than the read's
                break
        for offset, frame, epoch in tail:
            self._live(offset, frame, epoch)

    def live(self, offset: int, frame: bytes) -> None:
        """The feed delivered `offset` (of its epoch) to the live members."""
        if not self.ready:
            self.tail.append((offset, frame, self.feed.epoch))
            return
        self._live(offset, frame, self.feed.epoch)

    def follow(self, upto: int, epoch: str) -> None:
        """The feed went on from (epoch, upto) without handing this cursor what came
        before (the room's history restarted, or a gap the stream no longer held): so does
        the cursor, and a join with `since` is not recovered."""
        if self.since is not None and self.outcome == RECOVERED:
            self.outcome = OTHER_EPOCH if epoch != self.epoch else TRIMMED
        self.upto, self.epoch = upto, epoch

    def _live(self, offset: int, frame: bytes, epoch: str) -> None:
        if epoch != self.epoch:
            self.follow(offset - 1, epoch)
        if offset <= self.upto:
            return
        if offset > self.upto + 1 and self.outcome == RECOVERED and self.since is not None:
            self.outcome = TRIMMED      # the feed jumped (a gap the stream no longer held)
        self.frames.append(frame)
        self.upto = offset


class RedisHistoryStore:
    """One tenant's history in Redis (core/history.py `Store`)."""

    remote = True

    __slots__ = ("tenant", "broker", "prefix", "size", "ttl_ms", "meta_ttl_ms", "feeds", "outcomes", "replayed",
                 "gaps", "unnumbered", "nbytes", "count", "last_queued", "lost_rooms", "resets")

    def __init__(self, tenant, broker, size: int, ttl_ms: int) -> None:
        self.tenant = tenant
        self.broker = broker
        self.prefix = broker.keys.tenant(tenant.id)
        self.feeds: dict[str, Feed] = {}        # rooms with members here
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.replayed = 0
        self.gaps = {"repaired": 0, "lost": 0}  # feed gaps: filled from the stream, or no longer held
        self.unnumbered = 0                     # publishes delivered here only (broker down)
        self.lost_rooms: set = set()            # rooms with such publishes since the link went
        self.resets = 0                         # rooms whose history this node ended for them
        self.nbytes = self.count = 0            # kept in Redis, not here
        self.last_queued = None                 # (run, index) of the last publish, for `published`
        self.configure(size, ttl_ms)

    @property
    def rooms(self):
        return self.feeds

    def configure(self, size: int, ttl_ms: int) -> None:
        self.size = size
        self.ttl_ms = ttl_ms
        self.meta_ttl_ms = max(ttl_ms, META_TTL_MS)
        for feed in self.feeds.values():
            feed.route = None

    # -- publishing ---------------------------------------------------------------------
    def _route(self, room: str) -> tuple:
        return (self.broker.room_channel(self.tenant.id, room),
                (self.prefix, room, self.size, self.ttl_ms, self.meta_ttl_ms))

    def publish(self, room: str, head: bytes, tail: bytes):
        feed = self.feeds.get(room)
        if feed is None:
            route = self._route(room)                # a room with no member here (the server API)
        else:
            route = feed.route
            if route is None:
                route = feed.route = self._route(room)
        queued = self.broker.publish_numbered(route[0], route[1], head, tail)
        if queued is not None:
            self.last_queued = queued
            return None
        self.last_queued = None
        self.unnumbered += 1
        self._lost(room)
        return build_frame(OP_TEXT, head + tail)

    async def _published(self, queued) -> tuple[int, str]:
        run, index = queued
        first, epoch = await self.broker.numbered_answer(run)
        return first + index, epoch

    def published(self, room: str):
        """The position of the message just published (awaitable), or None: published
        while the broker was down, it has none."""
        queued = self.last_queued
        return None if queued is None else self._published(queued)

    def unnumbered_lost(self, room: str, payloads: list) -> None:
        """History messages whose step never ran (the link went first, or Redis answered
        it with an error): delivered here, unnumbered. The room's history ends now when
        the link is still up and no gap read is on its way (else after it, or at the
        reconnect)."""
        self.unnumbered += len(payloads)
        r = self.tenant.rooms.get(room)
        if r is not None:
            broadcast(r.members, b"".join(build_frame(OP_TEXT, p) for p in payloads), False)
        self._lost(room)

    def _lost(self, room: str) -> None:
        """A message of the room was delivered here unnumbered: its history ends, now when
        the link is up (Redis refused the step, or the link's backlog was past its cap)
        and no gap read is on its way, else after that read or at the reconnect."""
        self.lost_rooms.add(room)
        feed = self.feeds.get(room)
        if self.broker.linked and (feed is None or not feed.repairing):
            self._end_epoch(room)

    # -- rooms here ---------------------------------------------------------------------
    def occupied(self, room: str) -> Feed:
        feed = self.feeds.get(room)
        if feed is None:
            feed = self.feeds[room] = Feed(room)
        return feed

    def vacated(self, room: str) -> None:
        self.feeds.pop(room, None)

    def position(self, room: str) -> tuple[int, str]:
        feed = self.feeds.get(room)
        if feed is None:
            return 0, ""
        return feed.last or 0, feed.epoch or ""

    def replay(self, room: str, since) -> RedisCursor:
        feed = self.occupied(room)
        cursor = RedisCursor(self, feed, since)
        if feed.last is not None and not feed.repairing and (
                since is None or (since.epoch == feed.epoch and since.offset == feed.last)):
            cursor.settle(feed.last, feed.epoch, RECOVERED)        # nothing to read: live now
            return cursor
        if not self.broker.linked:                                   # broker down
            cursor.settle(feed.last or 0, feed.epoch or "", UNAVAILABLE)
            return cursor
        if since is None:
            fut = asyncio.ensure_future(self._read(room, 0, "", 0))
        else:
            fut = asyncio.ensure_future(self._read(room, since.offset, since.epoch, self.size))
        fut.add_done_callback(cursor.answered)
        return cursor

    async def _read(self, room: str, since: int, epoch: str, limit: int) -> tuple[int, str, int, list]:
        """(top, epoch, first offset, messages) of the room: the messages after `since` when
        `epoch` is the room's (or ''), else (another epoch, or `since` ahead) the oldest
        held on; at most `limit`. HistoryUnavailable when Redis cannot be read."""
        broker = self.broker
        fut = broker.history_read(self.prefix, room, "%d-0" % min(since + 1, U64_MAX), limit, self.meta_ttl_ms)
        if fut is None:
            raise HistoryUnavailable("the broker is down")
        try:
            found = read_answer(await fut, self.ttl_ms)
            if limit and ((epoch and epoch != found[1]) or since > found[0]):
                fut = broker.history_read(self.prefix, room, "-", limit, self.meta_ttl_ms)
                if fut is None:
                    raise HistoryUnavailable("the broker is down")
                found = read_answer(await fut, self.ttl_ms)
        except BrokerError as exc:
            raise HistoryUnavailable(str(exc)) from None
        return found

    def adopt(self, feed: Feed, top: int, epoch: str) -> None:
        """A join's read answered: a feed that did not know its position starts at `top`.
        One with another epoch does not jump there (the new epoch's first messages may
        still be on their way on the feed, and the read may be older than the feed): it
        reads the stream from its position, as for a gap."""
        if feed.last is None:
            feed.last, feed.epoch = top, epoch
            pending, feed.pending = feed.pending, {}
            self._drain(feed, pending)
        elif feed.epoch != epoch:
            if feed.repairing:
                feed.again = True
            else:
                self._repair(feed.room, feed)

    async def read(self, room: str, since: int, epoch: str | None, limit: int) -> tuple[str, int, list, bool]:
        top, room_epoch, first, messages = await self._read(room, since, epoch or "", limit)
        _, outcome = decide(since, room_epoch if epoch is None else epoch, room_epoch, top, first)
        return room_epoch, top, messages, outcome == RECOVERED

    # -- the feed -----------------------------------------------------------------------
    def on_feed(self, room: str, data: bytes) -> None:
        """An 'O' publish on the room's channel: numbered messages first, first+1, ..."""
        feed = self.feeds.get(room)
        if feed is None:
            return                      # no member here (the channel lingers)
        first, epoch, payloads = numbered_parts(data)
        if feed.epoch != epoch or feed.last is None:
            if feed.epoch != epoch:
                feed.pending.clear()    # the room's history was lost: a new epoch restarts it
            feed.epoch = epoch          # (or the first message here: it starts the feed)
            feed.last = first - 1
        last = feed.last
        if feed.repairing or first > last + 1:
            pending = feed.pending
            for i, p in enumerate(payloads):
                if first + i > last:
                    pending[first + i] = build_frame(OP_TEXT, p)
            if len(pending) > PENDING_MAX:
                self._reset(feed)
                return
            if not feed.repairing:
                self._repair(room, feed)
            return
        skip = last + 1 - first
        if skip >= len(payloads):
            return                      # delivered already
        frames = [build_frame(OP_TEXT, p) for p in (payloads[skip:] if skip else payloads)]
        self._deliver(room, feed, last + 1, frames)

    def _deliver(self, room: str, feed: Feed, first: int, frames: list) -> None:
        """Frames of offsets first, first+1, ... to the live members, then the joining."""
        r = self.tenant.rooms.get(room)
        feed.last = first + len(frames) - 1
        if r is not None and r.members:
            broadcast(r.members, frames[0] if len(frames) == 1 else b"".join(frames), False)
        if feed.cursors:
            for cursor in list(feed.cursors):
                for i, frame in enumerate(frames):
                    cursor.live(first + i, frame)
                if cursor.ready:
                    cursor._wake()      # more to hand out, or done

    def _repair(self, room: str, feed: Feed) -> None:
        """Read what followed the feed's `last` from the stream."""
        if not self.broker.linked:
            return                      # down: the reconnect repairs it
        feed.repairing = True
        feed.again = False
        issued = feed.epoch
        fut = asyncio.ensure_future(self._read(room, feed.last, issued or "", self.size))
        fut.add_done_callback(lambda f: self._repaired(room, feed, f, issued))

    def _repaired(self, room: str, feed: Feed, fut, issued) -> None:
        feed.repairing = False
        if fut.cancelled() or fut.exception() is not None:
            return                      # the link went: repaired after the reconnect
        if room in self.lost_rooms:
            self._end_epoch(room)       # after the gap's messages are read (delivered below)
        if self.feeds.get(room) is not feed:
            return                      # the room emptied meanwhile
        if (feed.again or feed.epoch != issued) and feed.last is not None:
            # the feed moved to another epoch while the read was on its way (the answer may
            # be from before: it would revert the feed and drop what it holds), or a join
            # read another epoch meanwhile: read again from where the feed is now
            self._repair(room, feed)
            return
        top, epoch, first, messages = fut.result()
        if epoch != feed.epoch or feed.last is None:
            if epoch != feed.epoch:
                feed.pending = {}       # held messages of the old epoch
            feed.epoch = epoch
            feed.last = top if feed.last is None else 0
        read = {first + i: build_frame(OP_TEXT, d) for i, d in enumerate(messages)}
        pending, feed.pending = feed.pending, {}
        read.update({o: f for o, f in pending.items() if o not in read})
        if not read and top > feed.last:
            self.gaps["lost"] += 1      # nothing held any more: go on from the top
            feed.last = top
        else:
            self._drain(feed, read)
        for cursor in list(feed.cursors):   # the joins waiting on the feed: done now, or
            if cursor.ready:                # following where it went without them
                if cursor.epoch != feed.epoch or cursor.upto < feed.last:
                    cursor.follow(feed.last, feed.epoch)
                cursor._wake()

    def _drain(self, feed: Feed, held: dict) -> None:
        """Deliver held messages newer than `last` in offset order; a hole the stream
        did not fill is jumped over (counted as lost)."""
        if not held:
            return
        room = feed.room
        items = sorted((o, f) for o, f in held.items() if o > feed.last)
        if not items:
            return
        if items[0][0] > feed.last + 1:
            self.gaps["lost"] += 1
        else:
            self.gaps["repaired"] += 1
        run_first, run = items[0][0], [items[0][1]]
        for o, f in items[1:]:
            if o != run_first + len(run):
                self._deliver(room, feed, run_first, run)
                self.gaps["lost"] += 1
                run_first, run = o, []
            run.append(f)
        self._deliver(room, feed, run_first, run)

    def _reset(self, feed: Feed) -> None:
        """Too much held while a gap is read: start over from the room's top."""
        feed.pending = {}
        feed.last = None
        self.gaps["lost"] += 1

    def relink(self) -> None:
        """The broker is back (its subscriber link new): repair every feed's gap, then end
        the history of each room this node published to unnumbered meanwhile."""
        for room, feed in self.feeds.items():
            if feed.last is not None and not feed.repairing:
                self._repair(room, feed)
        for room in list(self.lost_rooms):
            feed = self.feeds.get(room)
            if feed is None or not feed.repairing:
                self._end_epoch(room)

    def _end_epoch(self, room: str) -> None:
        """Messages this node delivered unnumbered (Redis was down) are in no history, and
        every client that was not here live missed them: the room's history ends (its
        record and stream are deleted), so the next publish or read starts a new epoch and
        every join with `since` from before hears `recovered: false` (SPEC 13: a loss is
        always reported). Done after the outage's gap is repaired, so nothing the other
        nodes published meanwhile is lost to this node's members."""
        if self.broker.history_reset(self.prefix, room):
            self.lost_rooms.discard(room)
            self.resets += 1

    # -- the rest of the Store ------------------------------------------------------------
    def sweep(self, budget: int) -> bool:
        return False                    # Redis expires the streams and metas

    def clear(self) -> None:
        """History turned off (a reload): the joins waiting on a read are woken, see the
        store replaced and go live unrecovered (core/recovery.py); Redis expires the rest."""
        for feed in self.feeds.values():
            for cursor in list(feed.cursors):
                cursor._wake()
        self.feeds.clear()

