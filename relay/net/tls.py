"""TLS on the relay's own port: https and wss, with modern defaults.

``TlsStream`` is the server side of one TLS connection: ``ssl.SSLObject``
over two ``ssl.MemoryBIO`` (public stdlib API), on trio's socket. It exists
for ``try_send``: an event frame for a TLS subscriber is encrypted and its
ciphertext written with one non-blocking ``os.write`` on the socket, from the
hub's task, like the shared frame bytes of a plain TCP subscriber - no task
switch while the kernel takes it all. Through ``trio.SSLStream`` (whose
SSLObject is private) every frame for a TLS subscriber woke a writer task
and went through ``send_all``, parking and rescheduling per frame: 2.2 times
the CPU per frame of an aiohttp relay at 10 events/s, little of it
encryption.

How the pieces fit:

- All ciphertext leaves through ``_unsent``, in the order the SSLObject
  produced it: after every SSLObject call, whatever it wrote into the outgoing
  BIO is taken at once (no ``await`` in between) and written, or kept in
  ``_unsent`` behind what already waits. Whoever writes - a sender, the
  reader answering a KeyUpdate or sending an alert, ``aclose`` - writes from
  the front of ``_unsent``; so records reach the socket in order however the
  tasks interleave.
- Only a sender (``send_all``, ``wait_send_all_might_not_block``, the
  handshake, ``aclose``) ever waits for the socket to become writable; the
  reader writes what it produced without blocking and leaves the rest to the
  next send. A reader waiting for input holds no SSL state: its wait is on
  the socket alone, between SSLObject calls.
- ``try_send`` takes nothing (returns 0) while ciphertext from before is
  still waiting after one more non-blocking write, so at most one write's
  worth of ciphertext is ever kept here; the caller queues and its writer's
  ``send_all`` flushes the rest first. When it takes data, it takes all of
  it; ``backed_up`` then says whether the end of the ciphertext still waits
  for room in the kernel (``send_all(b"")`` flushes it).
- ``send_all`` encrypts at most ``_CHUNK`` bytes ahead of what the kernel
  took: a large backlog is not held twice (plaintext and ciphertext). A
  cancelled ``send_all`` leaves what it encrypted in ``_unsent``: the next
  send writes it first, and the stream stays usable.
- One sender and one receiver at a time, as for any trio stream
  (``trio.BusyResourceError`` otherwise); ``try_send`` while another task is
  in ``send_all`` returns 0.
- EOF: the client's close_notify, or a close without one (https-compatible,
  as ``trio.SSLStream(https_compatible=True)``: browsers and HTTP clients
  often just close), is end of input (``b""``). Other TLS errors, and a
  socket that fails a write, make the stream broken
  (``trio.BrokenResourceError``).
- TLS 1.3 session tickets, written by OpenSSL as the handshake completes,
  go out in front of the first answer, as ``trio.SSLStream`` does (trio
  issue 819: a client may not expect data at that point).
- ``aclose`` sends close_notify and gives it ``CLOSE_TIMEOUT`` to reach the
  kernel (behind any ciphertext still waiting), then closes the socket.
  Renegotiation is off (``relay.config.files.server_context``): no handshake after the first.
"""

from __future__ import annotations

import ssl

import trio

from .sockets import send_now

HANDSHAKE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 1.0  # seconds close_notify (and ciphertext before it) may take

_RECEIVE = 65536  # ciphertext read from the socket at once
_CHUNK = 65536  # plaintext encrypted ahead of the kernel by send_all

_OK, _BROKEN, _CLOSED = 0, 1, 2


def _is_eof(exc: ssl.SSLError) -> bool:
    """A peer that closed without close_notify (or mid-record)."""
    return (isinstance(exc, (ssl.SSLEOFError, ssl.SSLSyscallError))
            or "UNEXPECTED_EOF_WHILE_READING" in str(exc.strerror or ""))


class TlsStream(trio.abc.Stream):
    """The server side of a TLS connection over a ``trio.SocketStream``.

    Call ``do_handshake`` first (under a deadline: a client may never finish
    it). ``transport_stream`` is the socket stream, as for ``trio.SSLStream``.
    """

    __slots__ = ("transport_stream", "_fd", "_obj", "_in", "_out", "_unsent", "_state", "_handshook",
                 "_sending", "_receiving")

    def __init__(self, transport_stream: trio.SocketStream, context: ssl.SSLContext) -> None:
        self.transport_stream = transport_stream
        self._fd = transport_stream.socket.fileno()
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=True)
        # Ciphertext produced but not yet taken by the kernel.
        self._unsent: bytes | memoryview | None = None
        self._state = _OK
        self._handshook = False
        self._sending = False
        self._receiving = False

    @property
    def backed_up(self) -> bool:
        """Ciphertext waits for room in the kernel (``send_all`` flushes it)."""
        return self._unsent is not None

    # -- writing ciphertext ----------------------------------------------

    def _broken(self, exc: BaseException) -> trio.BrokenResourceError:
        self._state = _BROKEN
        self._unsent = None
        error = trio.BrokenResourceError(f"TLS connection broken: {exc}")
        error.__cause__ = exc
        return error

    def _check(self) -> None:
        if self._state is _BROKEN:
            raise trio.BrokenResourceError("TLS connection broken")
        if self._state is _CLOSED:
            raise trio.ClosedResourceError("TLS stream closed")

    def _flush_now(self) -> None:
        """Write what ciphertext waits, without blocking."""
        data = self._unsent
        if data is None or self._state is not _OK:
            return  # (never write to an fd that may already belong to another socket)
        try:
            sent = send_now(self._fd, data)
        except trio.BrokenResourceError as exc:
            raise self._broken(exc.__cause__ or exc) from exc.__cause__
        if sent == len(data):
            self._unsent = None
        else:
            self._unsent = memoryview(data)[sent:]

    def _push(self) -> None:
        """Queue what the SSLObject wrote behind what waits, and write it."""
        out = self._out.read()
        if out:
            self._unsent = out if self._unsent is None else b"".join((self._unsent, out))
            self._flush_now()

    async def _flush(self) -> bool:
        """Write everything that waits; a sender's task only. True if it
        had to wait for the socket."""
        waited = False
        while True:
            self._flush_now()
            if self._unsent is None:
                return waited
            self._check()
            await trio.lowlevel.wait_writable(self._fd)
            waited = True

    # -- the handshake -----------------------------------------------------

    async def do_handshake(self) -> None:
        """Complete the server handshake; the first thing to call."""
        if self._handshook:
            await trio.lowlevel.checkpoint()
            return
        self._check()
        if self._sending or self._receiving:
            raise trio.BusyResourceError("the TLS handshake runs before anything else")
        self._sending = self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                try:
                    self._obj.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLError, ssl.CertificateError) as exc:
                    try:
                        self._push()  # the alert that says why, if the socket takes it
                    except trio.BrokenResourceError:
                        pass
                    raise self._broken(exc) from exc
                else:
                    self._handshook = True
                    out = self._out.read()
                    if out:
                        self._unsent = out
                        if self._obj.version() != "TLSv1.3":
                            await self._flush()  # TLS 1.2: the client waits for our Finished
                        # TLS 1.3: session tickets, sent with the first answer.
                    return
                out = self._out.read()
                if out:
                    self._unsent = out
                    await self._flush()
                data = await self.transport_stream.receive_some(_RECEIVE)
                if data:
                    self._in.write(data)
                else:
                    self._in.write_eof()
        finally:
            self._sending = self._receiving = False

    # -- sending -----------------------------------------------------------

    def try_send(self, data: bytes | memoryview) -> int:
        """Encrypt ``data`` and write it without blocking or yielding.

        Returns 0 when nothing was taken (ciphertext from before still waits,
        another task is sending, or the handshake is not done): queue it and
        ``send_all`` it later. Otherwise all of ``data`` was taken and
        ``len(data)`` is returned; ``backed_up`` says whether the end of its
        ciphertext still waits for the kernel (``send_all(b"")`` flushes it).
        Raises ``trio.BrokenResourceError`` when the peer is gone and
        ``trio.ClosedResourceError`` after ``aclose``.
        """
        if self._state is not _OK:
            self._check()
        if self._sending or not self._handshook:
            return 0
        if self._unsent is not None:
            self._flush_now()
            if self._unsent is not None:
                return 0
        if not data:
            return 0
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise self._broken(exc) from exc
        self._unsent = self._out.read()
        self._flush_now()
        return len(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` after any ciphertext that waits; ``b""`` just flushes."""
        if not self._handshook:
            await self.do_handshake()
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        self._sending = True
        try:
            self._check()
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data).cast("B")
            waited = False
            offset, end = 0, len(view)
            while True:
                if self._unsent is not None and await self._flush():
                    waited = True
                if offset >= end:
                    break
                self._check()  # (closed while it waited)
                try:
                    self._obj.write(view[offset : offset + _CHUNK])
                except ssl.SSLError as exc:
                    raise self._broken(exc) from exc
                offset += _CHUNK
                self._push()
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        self._sending = True
        try:
            self._check()
            await self._flush()
            await trio.lowlevel.wait_writable(self._fd)
        finally:
            self._sending = False

    # -- receiving ---------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Decrypted bytes; ``b""`` at the end of input (close_notify, or a
        close without it)."""
        if not self._handshook:
            await self.do_handshake()
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TLS stream")
        if max_bytes is None:
            max_bytes = _RECEIVE
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self._receiving = True
        try:
            self._check()
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                data: bytes | None
                try:
                    data = self._obj.read(max_bytes)
                except ssl.SSLWantReadError:
                    data = None
                except ssl.SSLZeroReturnError:
                    data = b""  # close_notify
                except ssl.SSLError as exc:
                    if not _is_eof(exc):
                        try:
                            self._push()
                        except trio.BrokenResourceError:
                            pass
                        raise self._broken(exc) from exc
                    data = b""
                # Reading may have made something to send: an answer to a
                # KeyUpdate, a refusal of renegotiation. In order, no wait.
                if self._out.pending:
                    self._push()
                if data is not None:
                    if not waited:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                # Nothing is held across this wait but the socket itself.
                incoming = await self.transport_stream.receive_some(_RECEIVE)
                waited = True
                self._check()
                if incoming:
                    self._in.write(incoming)
                else:
                    self._in.write_eof()
        finally:
            self._receiving = False

    # -- closing -----------------------------------------------------------

    async def aclose(self) -> None:
        """close_notify (bounded by CLOSE_TIMEOUT), then close the socket."""
        if self._state is _CLOSED:
            await trio.lowlevel.checkpoint()
            return
        try:
            if self._state is _OK and self._handshook and not self._sending:
                self._sending = True
                try:
                    try:
                        self._obj.unwrap()
                    except ssl.SSLError:
                        pass  # SSLWantReadError: the client's close_notify is not waited for
                    self._push()
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await self._flush()
                finally:
                    self._sending = False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._state = _CLOSED
            self._unsent = None
            await self.transport_stream.aclose()
