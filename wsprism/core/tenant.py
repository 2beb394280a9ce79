"""Everything the gateway keeps for one tenant while it runs.

Built by the gateway from the tenant's config and re-applied on reload (`apply`):
policy objects change for the next check, the live state (sessions, rooms, counters)
stays.
"""
from ..auth import make_authenticator
from ..ops.metrics import TenantStats
from ..policy.allowlist import ExtAllowlist, HotAllowlist
from ..policy.ratelimit import new_session_bucket, new_tenant_bucket
from ..services.webhook import build_forwarders
from .registry import SessionRegistry
from .rooms import RoomTable


class TenantRuntime:
    __slots__ = (
        "id", "cfg", "limits", "policy", "stats", "sessions", "rooms", "ext_allow", "hot_allow",
        "bucket", "authenticator", "forwarders", "max_frame_bytes", "hot_silent",
        "hot_requires_room", "hot_seq", "writer_send_timeout", "generation",
    )

    def __init__(self, cfg, gateway_cfg) -> None:
        self.id = cfg.id
        self.stats = TenantStats()
        self.sessions = SessionRegistry()
        self.rooms = RoomTable()
        self.bucket = None
        self.forwarders: dict = {}
        self.hot_seq = 0
        self.generation = 0
        self.apply(cfg, gateway_cfg)

    def apply(self, cfg, gateway_cfg) -> None:
        """Install (or re-install on reload) the tenant's config. Raises AuthSetupError."""
        authenticator = make_authenticator(cfg.auth)
        policy = cfg.policy
        self.cfg = cfg
        self.limits = cfg.limits
        self.policy = policy
        self.authenticator = authenticator
        self.forwarders = build_forwarders(cfg.id, cfg.services, self.forwarders)
        self.max_frame_bytes = cfg.limits.max_frame_bytes
        self.ext_allow = ExtAllowlist(policy.ext_allowlist)
        self.hot_allow = HotAllowlist(policy.hot_allowlist)
        self.hot_silent = policy.hot_error_mode == "silent"
        self.hot_requires_room = policy.hot_requires_active_room
        self.writer_send_timeout = gateway_cfg.writer_send_timeout_ms / 1000.0
        self.rooms.limits = cfg.limits
        self.rooms.presence_events = policy.presence_events
        if self.bucket is not None and policy.rate_limit_scope != "connection":
            self.bucket.configure(policy.rate_limit_rps, policy.rate_limit_burst)
        else:
            self.bucket = new_tenant_bucket(policy)
        if self.generation:
            self._rebucket_sessions(policy)
        self.generation += 1

    def _rebucket_sessions(self, policy) -> None:
        """On reload, live sessions take the new rate limit at their next message."""
        for session in self.sessions.all_sessions():
            if session.bucket is not None and policy.rate_limit_scope != "tenant":
                session.bucket.configure(policy.rate_limit_rps, policy.rate_limit_burst)
            else:
                session.bucket = new_session_bucket(policy)
