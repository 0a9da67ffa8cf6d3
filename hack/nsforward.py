"""Connects the host's loopback and a network namespace, so no private address is ever on the host.

Two jobs, one process (it runs in the host's namespace; a socket keeps the namespace it was made in):

- `--listen PORT --to HOST_PORT`: listens on 0.0.0.0:PORT *inside* the namespace (its loopback and
  the node's address there) and forwards each connection to 127.0.0.1:HOST_PORT on the host. The
  kubelet, kube-proxy, CoreDNS and pods reach the API server this way.
- `--connect-proxy SOCKET`: an HTTP CONNECT proxy on a unix socket on the host whose connections
  are made *inside* the namespace. The API server uses it (an EgressSelectorConfiguration for
  `cluster` traffic) to reach the kubelet for `kubectl logs` and `exec`, and Services it proxies to.

    python hack/nsforward.py --netns /run/netns/NAME --listen 6443 --to 34567 --connect-proxy /path/sock
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import socket
import sys
from pathlib import Path

CLONE_NEWNET = 0x40000000
BUFFER = 1 << 16


def setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def socket_in(netns_fd_path: str, host_path: str, family: int = socket.AF_INET) -> socket.socket:
    """A new TCP socket in the namespace at `netns_fd_path`; the thread returns to `host_path`."""
    setns(netns_fd_path)
    try:
        return socket.socket(family, socket.SOCK_STREAM)
    finally:
        setns(host_path)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    await asyncio.gather(pipe(client[0], upstream[1]), pipe(upstream[0], client[1]))


class Forwarder:
    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.host = f"/proc/{os.getpid()}/ns/net"
        # Keep a handle on the host namespace: /proc/self/ns/net follows the thread's namespace.
        self.host_fd_path = f"/proc/{os.getpid()}/fd/{os.open(self.host, os.O_RDONLY)}"

    async def to_host(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        try:
            upstream = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        await splice((reader, writer), upstream)

    async def connect_in_netns(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket_in(self.netns, self.host_fd_path, family)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except OSError:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def connect_proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or not port.isdigit():
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            writer.close()
            return
        try:
            upstream = await self.connect_in_netns(host.strip("[]"), int(port))
        except OSError as err:
            writer.write(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{err}".encode())
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await splice((reader, writer), upstream)


async def serve(args: argparse.Namespace) -> None:
    forwarder = Forwarder(args.netns)
    servers = []
    for listen, target in zip(args.listen, args.to, strict=True):
        sock = socket_in(args.netns, forwarder.host_fd_path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", listen))

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, port: int = target) -> None:
            await forwarder.to_host(r, w, port)

        servers.append(await asyncio.start_server(handle, sock=sock))
    if args.connect_proxy:
        Path(args.connect_proxy).unlink(missing_ok=True)
        servers.append(await asyncio.start_unix_server(forwarder.connect_proxy, path=args.connect_proxy))
    print("ready", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--netns", required=True, help="path of the network namespace, e.g. /run/netns/NAME")
    parser.add_argument("--listen", type=int, action="append", default=[], help="port inside the namespace")
    parser.add_argument("--to", type=int, action="append", default=[], help="port on the host's 127.0.0.1")
    parser.add_argument("--connect-proxy", help="unix socket of the HTTP CONNECT proxy into the namespace")
    args = parser.parse_args(argv)
    if len(args.listen) != len(args.to):
        parser.error("give one --to for each --listen")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
