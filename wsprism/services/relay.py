"""Hot Lane service 1: echo/relay.

With an active room, the frame's exact bytes (ACK_REQUESTED cleared) go to every member
of that room, the sender included, lossy: a member over its high-water mark is skipped
and counted. With no active room the frame goes back to the sender alone.
"""
FLAG_SEQ_PRESENT = 0x01
FLAG_ACK_REQUESTED = 0x02
FLAG_IS_ACK = 0x04

SVC_ID = 1


def relay(session, payload: bytes, flags: int) -> None:
    if flags & FLAG_ACK_REQUESTED:
        out = payload[:2] + bytes((flags & ~FLAG_ACK_REQUESTED,)) + payload[3:]
    else:
        out = payload
    tenant = session.tenant
    name = session.rooms[-1] if session.rooms else None
    room = tenant.rooms.get(name) if name is not None else None
    if room is None:
        if not session.send_lossy(out):
            tenant.stats.egress_drops += 1
    else:
        drops = 0
        for member in room.members:
            if not member.send_lossy(out):
                drops += 1
        if drops:
            tenant.stats.egress_drops += drops
    if flags & FLAG_ACK_REQUESTED and flags & FLAG_SEQ_PRESENT:
        session.send_binary(payload[:2] + bytes((FLAG_SEQ_PRESENT | FLAG_IS_ACK,)) + payload[3:7])


HOT_SERVICES = {SVC_ID: relay}
