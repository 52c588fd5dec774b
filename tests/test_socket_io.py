"""The connection's reader and writer: every byte arrives, in order, whatever the block boundaries."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from davserver.tls import SocketReader, SocketWriter


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _send_in_pieces(sock: socket.socket, data: bytes, piece: int) -> threading.Thread:
    def run() -> None:
        for i in range(0, len(data), piece):
            sock.sendall(data[i : i + piece])
        sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.mark.parametrize("piece", [1000, 16384, 65536 + 7, 1 << 20])
@pytest.mark.parametrize("block", [100, 65536, 65537, 262144, 1 << 20])
def test_reader_returns_every_byte_in_order(pair, piece: int, block: int) -> None:
    a, b = pair
    body = os.urandom(3 * (1 << 20) + 123)
    head = b"PUT /x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
    sender = _send_in_pieces(a, head + body, piece)
    reader = SocketReader(b, "rb", 1 << 16)
    assert reader.readline() == b"PUT /x HTTP/1.1\r\n"
    assert reader.readline().startswith(b"Content-Length")
    assert reader.readline() == b"\r\n"
    got = bytearray()
    while True:
        chunk = reader.read(block)
        if not chunk:
            break
        assert len(chunk) <= block
        got += chunk
    sender.join()
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    assert reader.bytes_read == len(head) + len(body)


def test_large_read_stops_at_end_of_stream(pair) -> None:
    a, b = pair
    a.sendall(b"x" * 70000)
    a.shutdown(socket.SHUT_WR)
    reader = SocketReader(b, "rb", 1 << 16)
    assert len(reader.read(1 << 20)) == 70000
    assert reader.read(1 << 20) == b""


class _Recording:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends: list[bytes] = []

    def sendall(self, data) -> None:
        self.sends.append(bytes(data))
        self.sock.sendall(data)


def test_held_headers_leave_with_the_first_small_block(pair) -> None:
    a, b = pair
    writer = SocketWriter(a, "wb", 1 << 16)
    rec = _Recording(a)
    writer._sock = rec  # type: ignore[assignment]
    writer.hold()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert rec.sends == []
    writer.write(b"hello")
    writer.release()
    assert rec.sends == [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"]
    assert writer.bytes_written == len(rec.sends[0])


def test_held_headers_are_sent_on_release_and_before_a_large_block(pair) -> None:
    a, b = pair
    writer = SocketWriter(a, "wb", 1 << 16)
    rec = _Recording(a)
    writer._sock = rec  # type: ignore[assignment]
    writer.hold()
    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    writer.release()
    assert rec.sends == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    writer.hold()
    writer.write(b"HEAD")
    big = os.urandom(1 << 20)
    expected = len(rec.sends[0]) + 4 + len(big)
    received = bytearray()

    def drain() -> None:
        while len(received) < expected:
            received.extend(b.recv(1 << 20))

    reading = threading.Thread(target=drain)
    reading.start()
    writer.write(big)
    reading.join()
    assert rec.sends[1:] == [b"HEAD", big]
    assert bytes(received) == b"".join(rec.sends)
