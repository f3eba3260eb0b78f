"""A header-adding reverse proxy for clients that cannot send one (the MCP Inspector CLI 0.15
has no header option): every request to 127.0.0.1:LISTEN is forwarded to UPSTREAM with
`Authorization: Bearer $MEMWARDEN_TOKEN`, and the response streamed back as it arrives (SSE).
Usage: MEMWARDEN_TOKEN=... python3 bearer_proxy.py LISTEN_PORT UPSTREAM_HOST:PORT
"""
import http.client
import http.server
import os
import sys

UPSTREAM = sys.argv[2]
TOKEN = os.environ["MEMWARDEN_TOKEN"]
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate", "host", "content-length"}


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        headers["Authorization"] = f"Bearer {TOKEN}"
        upstream = http.client.HTTPConnection(UPSTREAM, timeout=60)
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        self.send_response(response.status)
        for k, v in response.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        while True:
            chunk = response.read1(65536)
            if not chunk:
                break
            self.wfile.write(chunk)
            self.wfile.flush()
        upstream.close()

    do_GET = do_POST = do_DELETE = forward

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Proxy).serve_forever()
