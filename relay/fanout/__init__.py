"""Fan-out: from a committed event to every subscriber's socket.

The hub's task (``hub``) over the index's rules, each subscriber's direct
writes over its queue's rules (``subscriber``), the sessions that hold a
subscription open over WebSocket (``ws``) or SSE (``sse``), the upgrade
steps they share (``upgrade``), and the app-wide timers (``timers``).
"""
