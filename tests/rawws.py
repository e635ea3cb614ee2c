"""A minimal blocking websocket client over a raw socket, for tests that need a client that stops reading
or that sends frames no library client would.

Library clients keep reading the socket in the background; this one reads only when asked,
with a small kernel receive buffer, so a test can stall it for real.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from urllib.parse import urlsplit


class RawWebSocket:
    def __init__(self, url: str, path: str, receive_buffer: int = 64 * 1024) -> None:
        address = urlsplit(url)
        self.sock = socket.socket()
        # Set before connecting: it caps the TCP window (loopback autotuning would allow tens of MB).
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(15)
        self.sock.connect((address.hostname, address.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {address.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)
        assert response.startswith(b"HTTP/1.1 101"), response

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def recv(self) -> str:
        """The next text message (server frames are never masked; fragments are joined)."""
        message = b""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", self._read(8))
            payload = self._read(length)
            opcode = first & 0x0F
            if opcode == 0x8:
                raise ConnectionError("closed by the server")
            if opcode in (0x9, 0xA):  # ping/pong frames: not messages
                continue
            message += payload
            if first & 0x80:
                return message.decode()

    def send(self, text: str) -> None:
        """One text message, in a single frame."""
        self._send_frame(0x1, text.encode())

    def send_together(self, *texts: str) -> None:
        """Text messages in one write: the server reads them at once, before it handles the first."""
        self.sock.sendall(b"".join(self._frame(0x1, text.encode()) for text in texts))

    def send_binary(self, data: bytes) -> None:
        """One binary message, in a single frame (socket.io sends attachments this way)."""
        self._send_frame(0x2, data)

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        self.sock.sendall(self._frame(opcode, payload))

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return header + mask + masked

    def close(self) -> None:
        self.sock.close()
