"""relay: receive webhooks, relay them in real time to WebSocket and SSE subscribers."""

__version__ = "0.1.0"
