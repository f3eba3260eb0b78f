"""The official MCP Python SDK's Streamable HTTP client against memwarden serve-http.

Usage: MEMWARDEN_TOKEN=... python3 http_client.py http://127.0.0.1:PORT/mcp
Runs the six tools and prints "six tools: ok"; any mismatch raises.
"""
import asyncio
import os
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url: str, token: str) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with streamable_http_client(url, http_client=http) as (read, write, *_):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.server_info.name == "memwarden", init
            tools = sorted(t.name for t in (await session.list_tools()).tools)
            assert tools == ["memory_delete", "memory_get", "memory_list", "memory_search",
                             "memory_store", "memory_update"], tools

            async def call(name, args):
                result = await session.call_tool(name, args)
                assert not result.is_error, (name, result)
                return result.structured_content

            stored = await call("memory_store", {"content": "python was here", "tags": ["py"]})
            got = await call("memory_get", {"id": stored["id"]})
            assert got["memory"]["content"] == "python was here", got
            assert got["memory"]["verified"] is True, got
            found = await call("memory_search", {"query": "python"})
            assert found["results"][0]["memory"]["id"] == stored["id"], found
            listed = await call("memory_list", {"tags": ["py"]})
            assert [m["id"] for m in listed["memories"]] == [stored["id"]], listed
            updated = await call("memory_update", {"id": stored["id"], "content": "python again"})
            deleted = await call("memory_delete", {"id": updated["id"]})
            assert deleted["status"] == "deleted", deleted
    print("six tools: ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], os.environ["MEMWARDEN_TOKEN"]))
