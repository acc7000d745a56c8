"""The test world's services (run inside its namespace by tests/networld.py).

HTTP on port 80 of every address, answering ``hello from <address>``; DNS on
``argv[1]`` (UDP), answering the ``name=address`` pairs of ``argv[2]`` and
NXDOMAIN for anything else.
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import sys
import threading

import dns.message
import dns.rcode
import dns.rrset


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.connection.getsockname()[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve_dns(address: str, names: dict[str, str]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    while True:
        wire, peer = sock.recvfrom(4096)
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            continue
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        if name in names:
            if question.rdtype == 1:  # A
                response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", names[name]))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        sock.sendto(response.to_wire(), peer)


def main() -> None:
    names = dict(pair.split("=", 1) for pair in sys.argv[2].split(","))
    threading.Thread(target=serve_dns, args=(sys.argv[1], names), daemon=True).start()
    Server(("0.0.0.0", 80), Hello).serve_forever()


if __name__ == "__main__":
    main()
