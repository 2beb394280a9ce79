"""Redis key and channel names.

Every name is `<prefix>:` followed by fixed words and the ids it is about. Tenant ids
(`[A-Za-z0-9_.-]`), node ids (hex) and the key prefix (validated like a tenant id) never
contain `:`, `{`, `}` or a space, so each name reads back one way whatever the room name
or user id, and a user id or room name, always last in a name, may hold any byte. All of
a tenant's keys carry the hash tag `{<tenant>}`, so one tenant's keys and scripts sit on
one slot should the keyspace ever be sharded.

Inside values, the two composite entries are `"<sid> <user>"` and `"<room> <user>"`:
sids and room names cannot contain a space, so the first space splits them.

Global:   <p>:nodes            zset  node -> lease deadline (ms, Redis clock)
          <p>:nt:<node>        set   tenants a node has state in
          <p>:n:<node>         channel of one node (kicks, sends to a user, probes)
Tenant:   <p>:{T}:n            total sessions           <p>:{T}:seq   admission sequence
          <p>:{T}:users        hash  user -> sessions
          <p>:{T}:u:<user>     zset  sid -> admission seq (oldest first)
          <p>:{T}:un:<user>    hash  sid -> node
          <p>:{T}:ns:<node>    hash  "<sid> <user>" -> seq (a node's sessions)
          <p>:{T}:rooms        set   rooms with a member
          <p>:{T}:r:<room>     hash  user -> nodes where that user is in the room
          <p>:{T}:ur:<user>    hash  room -> nodes where that user is in the room
          <p>:{T}:nm:<node>    set   "<room> <user>" (a node's memberships)
          <p>:{T}:rs:<room>    hash  node -> that node's sessions in the room (`delivered`)
          <p>:{T}:c:<room>     channel of one room
          <p>:{T}:hm:<room>    hash  history meta: e (epoch), s (top offset)
          <p>:{T}:hs:<room>    stream  history: id <offset>-0, fields t (ms), d (message)
"""


class Keys:
    """Names for one key prefix and one node."""

    __slots__ = ("prefix", "nodes", "node_channel", "node_tenants")

    def __init__(self, prefix: str, node: str) -> None:
        self.prefix = prefix
        self.nodes = f"{prefix}:nodes"
        self.node_channel = self.channel_of_node(node)
        self.node_tenants = self.tenants_of_node(node)

    def channel_of_node(self, node: str) -> bytes:
        return f"{self.prefix}:n:{node}".encode()

    def tenants_of_node(self, node: str) -> str:
        return f"{self.prefix}:nt:{node}"

    def tenant(self, tenant_id: str) -> str:
        """The prefix of one tenant's keys (scripts add the rest)."""
        return f"{self.prefix}:{{{tenant_id}}}:"

    def room_sizes(self, tenant_id: str, room: str) -> str:
        return f"{self.prefix}:{{{tenant_id}}}:rs:{room}"

    def room_channel(self, tenant_id: str, room: str) -> bytes:
        return f"{self.prefix}:{{{tenant_id}}}:c:{room}".encode()

    def node_prefix(self) -> str:
        """What scripts prepend to a node id to get its channel."""
        return f"{self.prefix}:n:"
