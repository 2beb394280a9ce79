"""Operations at the side of the gateway: metrics, health, drain, reload."""
