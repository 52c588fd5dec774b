"""No connection the server ends leaves a descriptor open: a socket left to the garbage
collector stays open until it is collected (a file descriptor held for nothing), and then
warns ``ResourceWarning: unclosed <ssl.SSLSocket ...>``, which under ``filterwarnings =
error`` failed whichever test was running when the collector reached it.

The first case came from HAProxy's plain TCP health check (connect, then RST): a
connection reset before cheroot's accept loop wrapped it in TLS left Python's
``SSLContext.wrap_socket`` with an ``SSLSocket`` it neither closed nor returned
(tls.py ``_close_abandoned_wrap``). The handshake loop also closes a connection it fails
to take over or to hand on, and goes on with the next (handshake.py ``_take_intake``,
``_step``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from davserver.tls import DeferredHandshakeAdapter

from .conftest import Instance, client_context, running, session_for
from .test_handshake_flood import client_hello


def fds_on_port(port: int) -> list[int]:
    """This process's open descriptors of TCP sockets bound to local port `port` (also
    those the peer reset, which /proc/net/tcp no longer lists)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(fd)) as probe:
                if probe.family in (socket.AF_INET, socket.AF_INET6) and probe.getsockname()[1] == port:
                    found.append(fd)
    return found


def reset(sock: socket.socket) -> None:
    """Close `sock` with an RST (SO_LINGER 0), as HAProxy ends its TCP health checks."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def open_sslsockets(port: int) -> list[ssl.SSLSocket]:
    """The SSLSockets of this process still open on local port `port`."""
    found = []
    for obj in gc.get_objects():
        if isinstance(obj, ssl.SSLSocket) and obj.fileno() != -1:
            with contextlib.suppress(OSError):
                if obj.getsockname()[1] == port:
                    found.append(obj)
    return found


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        yield srv


def accepted_after(srv: socket.socket, data: bytes) -> socket.socket:
    """A connection to `srv` whose client sent `data` and reset it before it was accepted."""
    client = socket.create_connection(srv.getsockname())
    if data:
        client.sendall(data)
        time.sleep(0.05)  # in the server's receive queue before the RST
    reset(client)
    time.sleep(0.05)
    return srv.accept()[0]


@pytest.mark.parametrize("data", [b"", b"\x16\x03\x01"], ids=["silent", "with-bytes"])
def test_a_connection_reset_before_its_tls_wrap_leaves_no_descriptor_open(data: bytes) -> None:
    adapter = DeferredHandshakeAdapter(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    with listener() as srv:
        port = srv.getsockname()[1]
        sock = accepted_after(srv, data)
        with pytest.raises(ConnectionResetError) as err:
            adapter.wrap(sock)
        # while the exception (and its traceback, which holds Python's SSLSocket) still lives
        assert fds_on_port(port) == [srv.fileno()]
        assert not open_sslsockets(port)
        del err
    gc.collect()


def test_a_wrap_that_fails_otherwise_closes_the_accepted_socket_too() -> None:
    adapter = DeferredHandshakeAdapter(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    with listener() as srv, socket.create_connection(srv.getsockname()):
        sock = srv.accept()[0]
        adapter.context.check_hostname = True  # wrap_socket refuses before taking the descriptor
        with pytest.raises(ValueError, match="check_hostname"):
            adapter.wrap(sock)
        assert sock.fileno() == -1
        assert fds_on_port(srv.getsockname()[1]) == [srv.fileno()]


def test_a_servers_life_of_reset_and_abandoned_connections_leaves_no_descriptor(inst: Instance) -> None:
    """Connections reset right after connecting (before or after the accept), reset half-way
    through a ClientHello, after a whole one, after a served request; and connections
    still pending or idle when the server stops: once it stopped, the process holds no
    descriptor and no SSLSocket of its port."""
    hello = client_hello()
    alice = inst.clients["alice"]
    with running(inst) as server:
        port = server.port
        with session_for(inst) as s:
            assert s.get(f"https://127.0.0.1:{port}/files/", timeout=10).status_code == 200
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 3 == 1:
                sock.sendall(hello[: len(hello) // 2])
            elif i % 3 == 2:
                sock.sendall(hello)
            reset(sock)
        # served, then reset without close_notify
        for _ in range(5):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            tls = client_context(inst, alice).wrap_socket(raw, server_hostname="127.0.0.1")
            tls.sendall(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
            assert tls.recv(4096).startswith(b"HTTP/1.1")
            reset(tls)
        # left open across the stop: a silent one, one half-way through its handshake, an idle served one
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        halfway = socket.create_connection(("127.0.0.1", port), timeout=10)
        halfway.sendall(hello[:10])
        idle = client_context(inst, alice).wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")
        # answered: the accept loop took every connection before it (in order)
        idle.sendall(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(4096).startswith(b"HTTP/1.1")
    for sock in (silent, halfway, idle):
        sock.close()
    assert fds_on_port(port) == []
    gc.collect()
    assert not open_sslsockets(port)


def once(error: Exception, then: Callable[..., Any]) -> Callable[..., Any]:
    """A stand-in that raises `error` on its first call (any bug the layers around may
    have) and behaves as `then` afterwards."""
    calls = []

    def call(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise error
        return then(*args, **kwargs)

    return call


def closed_by_server(tls: ssl.SSLSocket) -> bool:
    try:
        return tls.recv(1) == b""
    except (ssl.SSLError, ConnectionResetError):
        return True


def test_a_connection_the_handshake_loop_cannot_hand_on_is_closed_and_the_loop_goes_on(
        inst: Instance, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = inst.clients["alice"]
    with running(inst) as server:
        cheroot = server.handshakes.server
        monkeypatch.setattr(cheroot, "put_conn", once(RuntimeError("a bug"), cheroot.put_conn))
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with client_context(inst, alice).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert closed_by_server(tls)  # not left open (and to the garbage collector)
        with session_for(inst) as s:
            assert s.get(f"https://127.0.0.1:{server.port}/files/", timeout=10).status_code == 200


def test_a_connection_the_handshake_loop_cannot_take_over_is_closed_and_the_loop_goes_on(
        inst: Instance, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = inst.clients["alice"]
    with running(inst) as server:
        loop = server.handshakes
        monkeypatch.setattr(loop, "_first_stage", once(RuntimeError("a bug"), loop._first_stage))
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
                pytest.raises((ssl.SSLError, ConnectionResetError)):
            client_context(inst, alice).wrap_socket(raw, server_hostname="127.0.0.1")
        with session_for(inst) as s:
            assert s.get(f"https://127.0.0.1:{server.port}/files/", timeout=10).status_code == 200
