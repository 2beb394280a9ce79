"""Policy: what may pass, checked cheapest first (size, rate, allowlists, session limits)."""
