"""The direct write every send path shares."""

from __future__ import annotations

import os
import socket

import pytest
import trio

from relay.net.sockets import send_now


def test_a_full_socket_buffer_takes_nothing_and_is_not_an_error():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        taken = sum(send_now(ours.fileno(), b"x" * 65536) for _ in range(100))
        assert taken > 0
        assert send_now(ours.fileno(), b"x") == 0


def test_any_write_failure_is_that_connections_alone():
    # A reset peer, and a failure no list of errnos would name (ENOSPC):
    # each is BrokenResourceError, never an OSError escaping into the hub.
    ours, theirs = socket.socketpair()
    with ours:
        theirs.close()
        with pytest.raises(trio.BrokenResourceError):
            send_now(ours.fileno(), b"x")
    if os.path.exists("/dev/full"):
        fd = os.open("/dev/full", os.O_WRONLY)
        try:
            with pytest.raises(trio.BrokenResourceError):
                send_now(fd, b"x")
        finally:
            os.close(fd)
