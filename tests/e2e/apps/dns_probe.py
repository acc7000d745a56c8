"""Run inside a sandbox: ask ``argv[1]`` for the A record of ``argv[2]`` over UDP, print the answer's rcode.

Stdlib only (sandbox images have no DNS library). Prints NOERROR, NXDOMAIN,
REFUSED..., or TIMEOUT when nothing answers.
"""

import random
import socket
import struct
import sys

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def main() -> None:
    server, name = sys.argv[1], sys.argv[2]
    ident = random.randrange(65536)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    query = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.sendto(query, (server, 53))
    try:
        reply, _ = sock.recvfrom(4096)
    except OSError:
        print("TIMEOUT")
        return
    print(RCODES.get(reply[3] & 0x0F, str(reply[3] & 0x0F)))


if __name__ == "__main__":
    main()
