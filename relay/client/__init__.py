"""The client side, for the CLI tools that talk to a running relay: an HTTP
and WebSocket client (``client``), the resumable subscriber
(``subscriber``), what ``tail`` prints (``render``), what ``forward`` POSTs
(``forward``) and what ``send`` signs and posts (``send``)."""
