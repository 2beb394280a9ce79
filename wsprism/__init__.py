"""wsPrism: a self-hosted realtime WebSocket gateway."""

__version__ = "0.1.0"
