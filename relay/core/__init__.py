"""The relay's pure core: rules over bytes and plain values, no I/O.

Nothing here imports trio, opens a socket or reads a clock; time is passed
in (a test imports each module alone and checks). The layers above do the
waiting and the writing. What is here:

- requests: ``http1`` (the HTTP/1.1 parser), ``request`` (a request as
  handlers see it), ``cors``, ``limits`` (connection slots);
- webhooks: ``ingest`` (a route's steps, giving a draft), ``verify``
  (signatures; the verify schemes' one home), ``schema``, ``channels``
  (names, patterns, templates), ``ratelimit``;
- events: ``envelope`` (drafts, stored events, frames), ``wire`` (the
  ``relay.v1`` messages both ways), ``index`` (the hub's rules), ``outbox``
  (a subscriber's queue and resume);
- subscribers: ``subscribe`` (what a subscription asks for), ``grants``
  (tokens, JWTs, origins);
- ``errors``: the one error hierarchy, each error with its HTTP status.
"""
