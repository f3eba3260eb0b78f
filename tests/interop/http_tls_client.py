"""serve-http over TLS with the official MCP Python SDK (httpx2, its HTTP client, underneath).

Usage: http_tls_client.py MODE URL --ca CA [--cert CERT --key KEY] [--token TOKEN]
  MODE mcp:   a whole MCP session (store, then get it back); prints "mcp: ok NAMESPACE".
  MODE probe: one initialize POST; prints "status N", or "tls error" when the handshake fails.
"""
import argparse
import asyncio
import ssl

import httpx2 as httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


def client(args) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=args.ca)
    if args.cert:
        context.load_cert_chain(args.cert, args.key)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    return httpx.AsyncClient(verify=context, headers=headers, timeout=30)


async def mcp_session(args) -> None:
    async with streamable_http_client(args.url, http_client=client(args)) as (read, write, *_):
        async with ClientSession(read, write) as session:
            await session.initialize()
            stored = await session.call_tool("memory_store", {"content": "over mutual TLS"})
            assert not stored.is_error, stored
            got = await session.call_tool("memory_get", {"id": stored.structured_content["id"]})
            assert got.structured_content["memory"]["content"] == "over mutual TLS", got
            print("mcp: ok", stored.structured_content["namespace"])


async def probe(args) -> None:
    body = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "probe", "version": "1"}}}
    try:
        async with client(args) as http:
            r = await http.post(args.url, json=body,
                                headers={"Accept": "application/json, text/event-stream"})
            print("status", r.status_code)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError) as e:
        print("tls error:", type(e).__name__)


parser = argparse.ArgumentParser()
parser.add_argument("mode", choices=["mcp", "probe"])
parser.add_argument("url")
parser.add_argument("--ca", required=True)
parser.add_argument("--cert")
parser.add_argument("--key")
parser.add_argument("--token")
args = parser.parse_args()
asyncio.run(mcp_session(args) if args.mode == "mcp" else probe(args))
