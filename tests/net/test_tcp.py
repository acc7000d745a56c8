"""Half-closed connections, as the host's kernel shows them: real sockets on loopback."""

from __future__ import annotations

import asyncio
import socket

from corral.net import tcp


def test_a_connection_we_closed_counts_until_the_peer_closes_too() -> None:
    async def scenario() -> None:
        peer_may_close = asyncio.Event()
        accepted = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set()
            assert await reader.read() == b""  # our close arrives as EOF; the peer still holds its side
            await peer_may_close.wait()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            assert tcp.half_closed_to("127.0.0.1", port) == 0
            clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
            await asyncio.wait_for(accepted.wait(), 5)
            assert tcp.half_closed_to("127.0.0.1", port) == 0  # open both ways
            for client in clients:
                client.close()
            await asyncio.sleep(0.05)
            assert tcp.half_closed_to("127.0.0.1", port) == 2
            assert not await tcp.closed_by_peer("127.0.0.1", port, timeout=0.1)  # it gave up in time
            assert tcp.half_closed_to("127.0.0.1", port + 1 if port < 65535 else port - 1) == 0  # another port
            peer_may_close.set()
            assert await tcp.closed_by_peer("127.0.0.1", port, timeout=5)
            assert tcp.half_closed_to("127.0.0.1", port) == 0

    asyncio.run(scenario())


def test_endpoints_read_as_the_kernel_writes_them() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue\n"
        "   0: 0100007F:9C40 0200D50A:C2AF 05 00000000:00000000\n"  # to 10.213.0.2:49839, FIN_WAIT2
        "   1: 0100007F:9C41 0200D50A:C2AF 06 00000000:00000000\n"  # TIME_WAIT: closed on both sides
        "   2: 0100007F:9C42 0200D50A:C2AF 01 00000000:00000000\n"  # ESTABLISHED
        "   3: 0100007F:9C43 0600D50A:C2AF 04 00000000:00000000\n"  # another address
    )
    if socket.htonl(1) != 1:  # little-endian host: the kernel prints the address's bytes reversed
        assert tcp.half_closed_to("10.213.0.2", 0xC2AF, table) == 1
        assert tcp.half_closed_to("10.213.0.6", 0xC2AF, table) == 1
        assert tcp.half_closed_to("10.213.0.10", 0xC2AF, table) == 0
