"""wsPrism: a self-hosted realtime WebSocket gateway.

README.md's "Layout" says where each part of the contract lives; `wsprism.service` is the
API for in-process Python services.
"""

__version__ = "0.1.0"
