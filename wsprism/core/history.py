"""Room history and recovery (SPEC 13): the in-memory store of one tenant.

Position. Every reliable message published to a room of a tenant with
`policy.history` gets the room's next `offset` (1, 2, ...) and carries the room's
`epoch`, a random string that changes whenever the room's history is lost (a restart;
the record expiring). A client that saw offset N of epoch E can ask for what followed.

What is kept, per room (`RoomHistory`):
- the encoded frames of the newest messages, each stored once: the very bytes object
  the live fan-out queued for every member, so keeping it costs no copy. They sit in a
  ring indexed by `offset - first offset`, beside an `array('d')` of publish times (no
  Python object per message but the frame itself). `size` trims the oldest first;
  a message older than `ttl_ms` is never replayed (checked at every read and trimmed
  at every publish);
- the meta, (epoch, top offset), which outlives the messages: a room's record stays
  while the room has members (`pinned`) and until `ttl_ms` after its last activity
  (its newest message, or its last member leaving). So a client that was the only
  member of a quiet room and comes back within `ttl_ms` still recovers (nothing to
  replay, `recovered: true`), and a room whose messages all expired while members
  stayed keeps its epoch. Such a record is not a room of the room table: it does not
  count toward `max_rooms_total`.

Memory is bounded by `size` × records × message size, and exported: `nbytes` (bytes of
the stored frames), `count` (messages), `len(rooms)` (records). A stored message costs
its frame plus about 49 bytes (the bytes object's header, one list slot, one double).

Expiry never walks all records at once. Records live in one OrderedDict ordered by
last activity (a publish or a vacated room moves its record to the end), so the records
due for expiry are always at the front. `sweep(budget)` looks at no more than `budget`
of them: a due record without members is dropped; one with members has its messages
cleared (all of them are older than `ttl_ms` by then) and goes to the back.

Recovery (`decide`): given `since` = (offset, epoch) the client last saw and the room's
(epoch, top, first held offset), a replay is either complete (`recovered: true`,
offsets since+1 .. top) or not (`recovered: false`, everything still held: the newest
it can, at most `size`): another epoch, an offset ahead of the top, or a gap the ring
no longer covers (trimmed by size or ttl).

Replay and live traffic (the race). Offsets make the merge exact, whatever the store:
a joining session is handed a `Replay`, a cursor over the room's history from
since+1. It is not a live member until its cursor has reached the room's top; at that
moment, in the same loop turn as the last comparison, it becomes one (and gets
`joined`). Everything published before that moment is in the history (the publish
point appends before it fans out), so the cursor reaches it; everything after goes to
the session live. No message is missed, none is sent twice, and order is by offset.
- In memory, the common case is one turn: reading is synchronous, so a replay that
  fits one chunk is queued whole, then `joined`, then live traffic. A larger replay
  is queued a chunk at a time as the session's socket drains (`Replay.take`), so a
  client that stops reading holds about one chunk of replay in our buffers, and a
  replay that makes no progress for `writer_send_timeout_ms` ends in 4005 like any
  slow consumer; memory never holds the whole history copied again per session.
- If the ring trims messages the cursor has not reached yet (a very slow reader in a
  busy room), the cursor jumps to the oldest message still held and the replay
  reports `recovered: false`: a loss is always reported.
- With Redis (the broker's streams), one atomic step per publish assigns the offset,
  appends to the room's stream (XADD with MAXLEN size) and publishes the positioned
  frame, so the broker's order on a room's channel is the offset order, for every
  node alike. A node delivers a history room's messages in that order, its own
  publishes included (they come back from the broker rather than going out locally
  first), and keeps, per room it holds, the newest offset it has delivered. The
  joining session's cursor reads with XRANGE from its next offset; the node
  subscribes to the room's channel before the first read, so anything published
  after a read is on the channel; entries at or below the cursor are skipped by
  offset. The session goes live in the turn where its cursor equals the node's newest
  delivered offset for the room; until then the node reads again. A channel message
  whose offset is not newest + 1 is a gap (missed while the broker link was down):
  the node holds newer messages, fills the gap from the stream for all its members of
  that room, then delivers in order. A gap the stream no longer covers shows as a
  jump in offsets, which a client can see (and re-join with `since` to hear
  `recovered: false`).
"""
from array import array
from collections import OrderedDict
from itertools import accumulate
from secrets import token_urlsafe
from time import monotonic
from typing import Annotated, Protocol

import msgspec

from .._fast import OP_TEXT, build_frame

U64_MAX = 2**64 - 1

# replay outcomes (metric label values)
RECOVERED = "recovered"
OTHER_EPOCH = "other_epoch"      # the client's epoch is not the room's (restart, room expired)
AHEAD = "ahead"                  # the client's offset is past the room's newest
TRIMMED = "trimmed"              # messages after the client's offset were trimmed (size or ttl)
ABORTED = "aborted"              # the session left, closed or stalled before its replay was over
PER_NODE = "per_node"            # a store that sees only this node's publishes (a broker, until
                                 # the shared Redis store): it cannot tell what it missed
OUTCOMES = (RECOVERED, OTHER_EPOCH, AHEAD, TRIMMED, ABORTED, PER_NODE)

SWEEP_BATCH = 500                # records looked at per sweep call (one loop turn)


def new_epoch() -> str:
    """12 characters of [A-Za-z0-9_-] (72 random bits): never needs JSON escaping."""
    return token_urlsafe(9)


# --- `room:join` data ------------------------------------------------------------------

class BadSince(Exception):
    """A malformed `since` (or join `data`): BAD_REQUEST, the session stays."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


class Since(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    offset: Annotated[int, msgspec.Meta(ge=0)]      # u64, upper bound checked below
    epoch: str


class JoinData(msgspec.Struct):
    """`room:join` data: an object (or null); keys other than `since` are ignored."""

    since: Since | None = None


_join_data = msgspec.json.Decoder(JoinData | None)


def decode_since(data) -> Since | None:
    """The `since` of a `room:join`'s raw `data` (msgspec.Raw, or UNSET when absent).

    `data` absent, null or without `since` (or `since: null`) → None. Raises BadSince
    for data that is not an object, and for a `since` that is not exactly
    {"offset": <integer 0..2^64-1>, "epoch": <string>} (a string, negative, float or
    too large offset; an epoch that is not a string; a missing or unknown key)."""
    if data is msgspec.UNSET:
        return None
    try:
        found = _join_data.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise BadSince(_reason(exc)) from None
    if found is None or found.since is None:
        return None
    if found.since.offset > U64_MAX:
        raise BadSince("data.since.offset out of range (u64)")
    return found.since


def _reason(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "data nested too deeply"
    text = str(exc)
    if "at `$.since" not in text:
        return "data must be an object" if isinstance(exc, msgspec.ValidationError) else "invalid JSON in data"
    return f'data.since must be {{"offset": <u64>, "epoch": <string>}} ({text[:200]})'


# --- the recovery decision -------------------------------------------------------------

def decide(since_offset: int, since_epoch: str, epoch: str, top: int, first: int) -> tuple[int, str]:
    """Where a replay starts and what it is worth: (start offset, outcome).

    `top` is the room's newest offset (0 if none), `first` the oldest offset still held
    (top + 1 when nothing is held). The replay is start .. top; it is complete only for
    RECOVERED. Otherwise it is everything still held (`first` .. top): the newest the
    room can give."""
    if since_epoch != epoch:
        return first, OTHER_EPOCH
    if since_offset > top:
        return first, AHEAD
    if since_offset + 1 < first:
        return first, TRIMMED
    return since_offset + 1, RECOVERED


# --- what the tenant calls (a store per tenant: this memory one, or a Redis one) -------

class Cursor(Protocol):
    """A join's replay: the messages after `since`, up to the room's top (`Replay`)."""

    @property
    def done(self) -> bool:
        """Every message up to the room's top has been handed out: the session can go live."""

    def take(self, max_bytes: int) -> list:
        """The next built frames in offset order, about `max_bytes` of them (at least one
        while not done)."""

    def finish(self) -> tuple[int, str, bool]:
        """Done: count the outcome; (offset, epoch, recovered) for `joined`."""

    def abort(self) -> None:
        """It will not finish (counted as `aborted`)."""


class Store(Protocol):
    """One tenant's room history as core/tenant.py uses it. `HistoryStore` keeps it in
    process memory; a Redis store (streams, with a broker) is to implement the same
    calls. The numbers the metrics read: `nbytes`, `count`, `rooms` (len), `outcomes`,
    `replayed`.

    What a Redis store changes (the module docstring's last part): the offset comes
    from Redis, so `publish` cannot return the frame; the frame reaches local members
    from the broker feed, in offset order, own publishes included. `position`, `replay`
    and `read` need a round trip (a join with history is then answered later, as a
    long replay already is), and a cursor's `take` may have nothing yet without being
    done (it must then wake its JoinRun instead of being polled)."""

    def configure(self, size: int, ttl_ms: int) -> None:
        """New limits (reload)."""

    def publish(self, room: str, head: bytes, tail: bytes) -> bytes:
        """Give the message (`head` + position + `tail`) the room's next offset, keep it,
        and return the built frame to fan out."""

    def occupied(self, room: str) -> object:
        """The room got its first member (its record stays while it has members)."""

    def vacated(self, room: str) -> None:
        """The room's last member left (its record stays `ttl_ms` from now)."""

    def position(self, room: str) -> tuple[int, str]:
        """(newest offset, epoch)."""

    def replay(self, room: str, since: "Since") -> Cursor:
        """The cursor for a join with `since` (the room is occupied by then)."""

    def read(self, room: str, since: int, epoch: str | None, limit: int) -> tuple[str, int, list, bool]:
        """For the server API: (epoch, top, payloads after `since`, complete)."""

    def sweep(self, budget: int) -> bool:
        """Expire what is due, looking at ≤ budget records; True when more are due."""

    def clear(self) -> None:
        """Forget everything (history turned off)."""


# --- one room --------------------------------------------------------------------------

class RoomHistory:
    """One room's record: its position (epoch, top) and a ring of its newest frames."""

    __slots__ = ("epoch", "epoch_part", "top", "frames", "times", "head", "count", "nbytes",
                 "pinned", "active_at")

    def __init__(self, epoch: str, now: float, pinned: bool) -> None:
        self.epoch = epoch
        self.epoch_part = b',"epoch":"' + epoch.encode() + b'"'   # spliced into every message
        self.top = 0                  # newest offset given out (0: none yet)
        self.frames: list = []        # the ring (its length is the capacity, at most size)
        self.times = array("d")       # publish time of each slot (the store's clock)
        self.head = 0                 # slot of the oldest message held
        self.count = 0                # messages held: offsets top-count+1 .. top
        self.nbytes = 0               # bytes of the frames held
        self.pinned = pinned          # the room has members: the record must stay
        self.active_at = now          # newest message, last member leaving, or sweep

    @property
    def first(self) -> int:
        """The oldest offset held (top + 1 when nothing is held)."""
        return self.top - self.count + 1

    def push(self, frame: bytes, now: float, size: int) -> None:
        """Hold `frame` as offset `top` (already incremented); the caller has trimmed to
        at most size - 1 messages."""
        frames = self.frames
        cap = len(frames)
        if self.count == cap:
            self._resize(min(size, max(4, 2 * cap)))
            frames = self.frames
            cap = len(frames)
        i = self.head + self.count
        if i >= cap:
            i -= cap
        frames[i] = frame
        self.times[i] = now
        self.count += 1
        self.nbytes += len(frame)

    def _resize(self, cap: int) -> None:
        """Lay the held messages out from slot 0 in a ring of `cap` slots (cap ≥ count)."""
        frames, times, head, n = self.frames, self.times, self.head, self.count
        old = len(frames)
        if head + n <= old:
            keep_f, keep_t = frames[head:head + n], times[head:head + n]
        else:
            keep_f, keep_t = frames[head:] + frames[:head + n - old], times[head:] + times[:head + n - old]
        keep_f.extend([None] * (cap - n))
        keep_t.frombytes(bytes(8 * (cap - n)))
        self.frames, self.times, self.head = keep_f, keep_t, 0

    def drop_oldest(self) -> int:
        """Forget the oldest message; returns its size in bytes."""
        h = self.head
        frame = self.frames[h]
        self.frames[h] = None
        h += 1
        self.head = 0 if h == len(self.frames) else h
        self.count -= 1
        n = len(frame)
        self.nbytes -= n
        return n

    def trim(self, cutoff: float, keep: int, size: int) -> tuple[int, int]:
        """Drop messages published at or before `cutoff`, and the oldest beyond `keep`
        (≤ size); a ring larger than `size` (lowered by a reload) shrinks to it.
        Returns (messages, bytes) dropped."""
        dropped = freed = 0
        times = self.times
        while self.count and (self.count > keep or times[self.head] <= cutoff):
            freed += self.drop_oldest()
            dropped += 1
        if len(self.frames) > size:
            self._resize(size)
        return dropped, freed

    def clear(self) -> tuple[int, int]:
        out = self.count, self.nbytes
        self.frames, self.times = [], array("d")
        self.head = self.count = self.nbytes = 0
        return out

    def frame_at(self, offset: int) -> bytes:
        """The frame of a held offset (first ≤ offset ≤ top)."""
        i = self.head + offset - self.first
        cap = len(self.frames)
        return self.frames[i - cap if i >= cap else i]


class Replay:
    """A join's cursor over one room's history, from `next` up to the room's top.

    `recovered` turns False if the room trims messages the cursor had not reached yet
    (the cursor then moves on to the oldest message still held)."""

    __slots__ = ("store", "rec", "next", "outcome", "top", "epoch")

    def __init__(self, store, rec: RoomHistory, start: int, outcome: str) -> None:
        self.store = store
        self.rec = rec
        self.next = start
        self.outcome = outcome
        self.top = rec.top            # the position `joined` reports, kept up to date by take
        self.epoch = rec.epoch

    @property
    def recovered(self) -> bool:
        return self.outcome == RECOVERED

    @property
    def done(self) -> bool:
        """True once every message up to the room's top has been handed out."""
        return self.next > self.rec.top

    def take(self, max_bytes: int) -> list:
        """Frames from the cursor on, in offset order, until their bytes reach
        `max_bytes` (at least one frame when any is due)."""
        rec = self.rec
        self.store.expire(rec)
        first = rec.first
        if self.next < first:
            self.next = first
            if self.outcome == RECOVERED:
                self.outcome = TRIMMED
        top = rec.top
        self.top = top
        n = top - self.next + 1
        if n <= 0:
            return []
        frames = rec.frames             # the ring: slices of it, not a call per frame
        cap = len(frames)
        i = rec.head + self.next - first
        if i >= cap:
            i -= cap
        j = i + n
        out = frames[i:j] if j <= cap else frames[i:] + frames[:j - cap]
        if sum(map(len, out)) > max_bytes:
            for k, nbytes in enumerate(accumulate(map(len, out))):
                if nbytes >= max_bytes:
                    del out[k + 1:]
                    break
        self.next += len(out)
        self.store.replayed += len(out)
        return out

    def finish(self) -> tuple[int, str, bool]:
        """The replay is over (`done`; the session goes live now): counts its outcome and
        returns what `joined` reports, (offset, epoch, recovered)."""
        self.store.outcomes[self.outcome] += 1
        return self.top, self.epoch, self.outcome == RECOVERED

    def abort(self) -> None:
        """The replay will not finish (the session left the room, closed or stalled)."""
        self.store.outcomes[ABORTED] += 1


# --- one tenant ------------------------------------------------------------------------

class HistoryStore:
    """The history of one tenant's rooms, in process memory."""

    __slots__ = ("size", "ttl", "rooms", "nbytes", "count", "outcomes", "replayed", "clock", "new_epoch",
                 "per_node")

    def __init__(self, size: int, ttl_ms: int, clock=monotonic, epochs=new_epoch, per_node: bool = False) -> None:
        self.rooms: OrderedDict[str, RoomHistory] = OrderedDict()   # by last activity, oldest first
        self.nbytes = 0                 # bytes of all stored frames
        self.count = 0                  # messages stored
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.replayed = 0               # messages handed to replays
        self.clock = clock
        self.new_epoch = epochs
        # with a broker: the other nodes' messages to a room are delivered here live but
        # not kept, so no replay is complete (`recovered: false`; this node's messages
        # after `since` are replayed)
        self.per_node = per_node
        self.configure(size, ttl_ms)

    def configure(self, size: int, ttl_ms: int) -> None:
        """New limits (reload): applied to each room at its next publish or read, and by
        the sweep."""
        self.size = size
        self.ttl = ttl_ms / 1000.0

    # -- records ---------------------------------------------------------------------
    def _record(self, name: str, now: float) -> RoomHistory:
        rec = self.rooms.get(name)
        if rec is None:
            rec = self.rooms[name] = RoomHistory(self.new_epoch(), now, False)
        return rec

    def occupied(self, name: str) -> RoomHistory:
        """The room got its first member: its record (created with a new epoch if the
        room has none) stays while it has members."""
        rec = self._record(name, self.clock())
        rec.pinned = True
        return rec

    def vacated(self, name: str) -> None:
        """The room's last member left: the record stays `ttl_ms` from now."""
        rec = self.rooms.get(name)
        if rec is not None:
            rec.pinned = False
            rec.active_at = self.clock()
            self.rooms.move_to_end(name)

    def position(self, name: str) -> tuple[int, str]:
        """(newest offset, epoch) of the room, creating its record if needed."""
        rec = self._record(name, self.clock())
        return rec.top, rec.epoch

    def expire(self, rec: RoomHistory) -> None:
        """Drop what `ttl_ms` and `size` no longer allow."""
        n, b = rec.trim(self.clock() - self.ttl, self.size, self.size)
        if n:
            self.count -= n
            self.nbytes -= b

    # -- the publish point -----------------------------------------------------------
    def publish(self, name: str, head: bytes, tail: bytes) -> bytes:
        """Give the message the room's next offset and keep it; returns the frame to fan
        out (the same object is stored). `head` + `tail` is the encoded message without
        its position (envelope.encode_room_parts); the position goes between them."""
        now = self.clock()
        rooms = self.rooms
        rec = rooms.get(name)
        if rec is None:
            rec = rooms[name] = RoomHistory(self.new_epoch(), now, False)
        else:
            rooms.move_to_end(name)
        rec.active_at = now
        size = self.size
        offset = rec.top = rec.top + 1
        frame = build_frame(OP_TEXT, b'%s,"offset":%d%s%s' % (head, offset, rec.epoch_part, tail))
        n = rec.count
        if n:
            cutoff = now - self.ttl
            h = rec.head
            if n == size and len(rec.frames) == size and rec.times[h + 1 if h + 1 < size else 0] > cutoff:
                # steady state, a full ring: the new message takes the oldest one's slot
                frames = rec.frames
                freed = len(frames[h])
                frames[h] = frame
                rec.times[h] = now
                rec.head = h + 1 if h + 1 < size else 0
                grown = len(frame) - freed
                rec.nbytes += grown
                self.nbytes += grown
                return frame
            if n >= size or rec.times[h] <= cutoff or len(rec.frames) > size:
                dropped, freed = rec.trim(cutoff, size - 1, size)
                self.count -= dropped
                self.nbytes -= freed
        rec.push(frame, now, size)
        self.count += 1
        self.nbytes += len(frame)
        return frame

    # -- reading ---------------------------------------------------------------------
    def replay(self, name: str, since: Since) -> Replay:
        """The replay for a join with `since` (the joining session made the room
        occupied, so its record stays while the replay runs)."""
        rec = self._record(name, self.clock())
        self.expire(rec)
        start, outcome = decide(since.offset, since.epoch, rec.epoch, rec.top, rec.first)
        if self.per_node and outcome == RECOVERED:
            outcome = PER_NODE              # this node's messages after `since`, not all there were
        return Replay(self, rec, start, outcome)

    def read(self, name: str, since: int, epoch: str | None, limit: int) -> tuple[str, int, list, bool]:
        """For the server API: (epoch, top, payloads, complete). `payloads` are the
        encoded messages (no frame header) after `since`, oldest first, at most `limit`;
        `complete` is False when some after `since` are gone (or `epoch` is not the room's)."""
        rec = self._record(name, self.clock())
        self.expire(rec)
        start, outcome = decide(since, rec.epoch if epoch is None else epoch, rec.epoch, rec.top, rec.first)
        if self.per_node and outcome == RECOVERED:
            outcome = PER_NODE              # what is held after `since`, but not all there was
        end = min(rec.top, start + limit - 1)
        out = [_payload(rec.frame_at(o)) for o in range(start, end + 1)]
        return rec.epoch, rec.top, out, outcome == RECOVERED

    # -- expiry ----------------------------------------------------------------------
    def sweep(self, budget: int = SWEEP_BATCH) -> bool:
        """Expire records whose last activity is `ttl_ms` old, at most `budget` of them.
        True when more are due (call again on a later loop turn)."""
        rooms = self.rooms
        now = self.clock()
        due = now - self.ttl
        while rooms:
            name, rec = next(iter(rooms.items()))
            if rec.active_at > due:
                return False
            if budget <= 0:
                return True
            budget -= 1
            n, b = rec.clear()
            self.count -= n
            self.nbytes -= b
            if rec.pinned:
                rec.active_at = now
                rooms.move_to_end(name)
            else:
                del rooms[name]
        return False

    def clear(self) -> None:
        """Forget everything (history turned off)."""
        self.rooms.clear()
        self.nbytes = self.count = 0


def _payload(frame: bytes) -> bytes:
    """The message inside a server text frame we built (unmasked, FIN)."""
    n = frame[1]
    return frame[2:] if n < 126 else frame[4:] if n == 126 else frame[10:]
