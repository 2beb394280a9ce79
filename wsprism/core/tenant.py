"""Everything the gateway keeps for one tenant while it runs.

Built by the gateway from the tenant's config and re-applied on reload (`apply`):
policy objects change for the next check, the live state (sessions, rooms, counters)
stays.
"""
from ..auth import make_authenticator
from ..ops.metrics import TenantStats
from .._fast import LanePolicy
from ..policy.allowlist import ExtAllowlist, HotAllowlist
from ..policy.ratelimit import new_session_bucket, new_tenant_bucket
from ..services.webhook import build_forwarders
from .registry import SessionRegistry
from .rooms import RoomTable


class TenantRuntime:
    __slots__ = (
        "id", "cfg", "limits", "policy", "stats", "lane", "sessions", "rooms", "ext_allow",
        "authenticator", "forwarders", "writer_send_timeout", "generation",
    )

    def __init__(self, cfg, gateway_cfg) -> None:
        self.id = cfg.id
        self.lane = LanePolicy()            # compiled lane settings + decision counters
        self.stats = TenantStats(self.lane)
        self.sessions = SessionRegistry()
        self.rooms = RoomTable()
        self.forwarders: dict = {}
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
        self.ext_allow = ExtAllowlist(policy.ext_allowlist)
        self.writer_send_timeout = gateway_cfg.writer_send_timeout_ms / 1000.0
        self.rooms.limits = cfg.limits
        self.rooms.presence_events = policy.presence_events
        lane = self.lane
        shared = lane.bucket
        if shared is not None and policy.rate_limit_scope != "connection":
            shared.configure(policy.rate_limit_rps, policy.rate_limit_burst)
        else:
            shared = new_tenant_bucket(policy)
        lane.configure(cfg.limits.max_frame_bytes, policy.hot_error_mode == "silent",
                       policy.hot_requires_active_room, HotAllowlist(policy.hot_allowlist), shared)
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
