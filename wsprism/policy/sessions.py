"""Per-user session policy (SPEC section 2): single/multi, max_sessions_per_user, deny or kick_oldest."""

DENY = "deny"


def over_limit(registry, user: str, policy) -> tuple[bool, list]:
    """For a new session of `user`: (denied, sessions to kick) under the tenant's policy.

    The new session is not in the registry yet. With deny, a user at the limit gets no
    new session; with kick_oldest, the oldest sessions go until the new one fits.
    """
    limit = policy.sessions.max_sessions_per_user
    live = registry.sessions_of(user)
    excess = len(live) + 1 - limit
    if excess <= 0:
        return False, []
    if policy.sessions.on_exceed == DENY:
        return True, []
    return False, live[:excess]
