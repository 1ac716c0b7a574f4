"""An asyncio echo server on the userspace endpoint, with kernel clients.

tcpstack.aio.start_server gives the usual StreamReader/StreamWriter pairs, driven by
the running event loop: no thread per connection. Clients are kernel sockets in the
lab's other namespace; each sends lines and checks the echo.

    sudo .venv/bin/python examples/echo_server.py            # self-check, then exit
    sudo .venv/bin/python examples/echo_server.py --forever  # and try it by hand:
    sudo ip netns exec <peer namespace> nc 198.18.0.2 7
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys

from tcpstack import aio
from tcpstack.lab import Lab

PORT = 7
CLIENTS = 20


served: list[tuple[str, int]] = []


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    served.append(writer.get_extra_info("peername"))
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


def kernel_client(lab: Lab, address: tuple[str, int], number: int) -> bool:
    with lab.in_peer():  # a socket belongs to the namespace it is created in
        sock = socket.create_connection(address, timeout=10)
    with sock, sock.makefile("rwb") as stream:
        lines = [f"client {number} line {i}\n".encode() for i in range(5)]
        for line in lines:
            stream.write(line)
            stream.flush()
            if stream.readline() != line:
                return False
        return True


async def main(forever: bool) -> int:
    with Lab("veth") as lab, lab.stack() as stack:
        server = await aio.start_server(stack, echo, port=PORT)
        address = (stack.address, PORT)
        print(f"echo server on {address[0]}:{address[1]} (tcpstack), one thread for all")
        if forever:
            print(f"try: sudo ip netns exec {lab.peer_netns} nc {address[0]} {PORT}")
            print("Ctrl-C to stop")
            async with server:
                await server.serve_forever()
        results = await asyncio.gather(
            *(asyncio.to_thread(kernel_client, lab, address, n) for n in range(CLIENTS))
        )
        server.close()
        await server.wait_closed()
    passed = sum(results)
    print(f"served {len(served)} connections on the event loop's thread")
    print(f"{passed} of {CLIENTS} kernel clients got every line back")
    return 0 if passed == CLIENTS else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forever", action="store_true", help="serve until Ctrl-C")
    try:
        sys.exit(asyncio.run(main(parser.parse_args().forever)))
    except KeyboardInterrupt:
        sys.exit(130)
