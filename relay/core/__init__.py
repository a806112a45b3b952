"""The relay's pure core: rules over bytes and plain values, no I/O.

Nothing here imports trio, opens a socket or reads a clock; time is passed
in. The trio shell around it (connections, sessions, the store engines) does
the waiting and the writing.
"""
