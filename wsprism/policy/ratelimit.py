"""Per-message rate limiting with the tenant's `rate_limit_scope`.

`connection`: one bucket per session; `tenant`: one bucket shared by all the tenant's
sessions; `both`: a message needs a token from each (the session's token is given back
when the tenant bucket says no). Ext and Hot Lane share the same buckets. The check
itself runs per frame in the framer (wsprism/_fast); this module makes the buckets.
"""
from .._fast import TokenBucket


def new_session_bucket(policy):
    if policy.rate_limit_scope == "tenant":
        return None
    return TokenBucket(policy.rate_limit_rps, policy.rate_limit_burst)


def new_tenant_bucket(policy):
    if policy.rate_limit_scope == "connection":
        return None
    return TokenBucket(policy.rate_limit_rps, policy.rate_limit_burst)
