"""The HTTP server and the daemon: the app's wiring and shutdown (``app``),
one HTTP/1.1 connection (``connection``), the paths and what a handler may
do (``router``), and the handlers: webhooks, ops, metrics, admin views and
the inspector page. ``logs`` formats what the relay writes to stderr."""
