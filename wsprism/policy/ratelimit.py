"""Per-message rate limiting with the tenant's `rate_limit_scope`.

`connection`: one bucket per session; `tenant`: one bucket shared by all the tenant's
sessions; `both`: a message needs a token from each (the session's token is given back
when the tenant bucket says no). Ext and Hot Lane share the same buckets.
"""
from time import monotonic

from .._fast import TokenBucket

NOTICE_INTERVAL = 1.0   # RATE_LIMITED notices: at most one per second per connection


def new_session_bucket(policy):
    if policy.rate_limit_scope == "tenant":
        return None
    return TokenBucket(policy.rate_limit_rps, policy.rate_limit_burst)


def new_tenant_bucket(policy):
    if policy.rate_limit_scope == "connection":
        return None
    return TokenBucket(policy.rate_limit_rps, policy.rate_limit_burst)


def allow(session) -> bool:
    bucket = session.bucket
    if bucket is not None and not bucket.allow():
        return False
    shared = session.tenant.bucket
    if shared is not None and not shared.allow():
        if bucket is not None:
            bucket.refund()
        return False
    return True


def should_notify(session) -> bool:
    """True at most once per NOTICE_INTERVAL per session (called only when limited)."""
    now = monotonic()
    if now - session.rl_notice_at >= NOTICE_INTERVAL:
        session.rl_notice_at = now
        return True
    return False
