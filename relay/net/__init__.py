"""The network under the HTTP server: direct socket writes (``sockets``),
TLS on the relay's own port (``tls``), and the listening sockets with the
connection count and a subscriber's TCP options (``listener``)."""
