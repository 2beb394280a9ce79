"""Realtime core: envelopes, sessions, the session registry, rooms and presence, dispatch."""
