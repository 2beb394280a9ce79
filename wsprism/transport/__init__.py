"""Transport: the picows server, the pre-upgrade router and the per-connection listener."""
