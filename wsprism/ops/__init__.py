"""Operations at the side of the gateway (SPEC 6, 8, 10): metrics rendering (metrics.py),
health and the demo page (health.py), the liveness sweep (liveness.py) and the server
API for backends (api.py). Drain and reload are the gateway's (wsprism/gateway.py)."""
