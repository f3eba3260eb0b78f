#!/usr/bin/env bash
# Interoperability smoke test with a client nobody on the team wrote: the MCP Inspector CLI,
# over stdio and over Streamable HTTP (serve-http).
# Lists the tools, stores one memory, finds it again. Usage: .ci/interop.sh PATH/TO/memwarden
set -euo pipefail
bin=$(realpath "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cache=${MEMWARDEN_INSPECTOR_DIR:-$HOME/.cache/memwarden-ci/inspector}
if [ ! -x "$cache/node_modules/.bin/mcp-inspector" ]; then
  mkdir -p "$cache"
  npm install --prefix "$cache" --no-audit --no-fund --loglevel=error @modelcontextprotocol/inspector@0.15 >/dev/null
fi
inspector="$cache/node_modules/.bin/mcp-inspector"
data="$work/data"
# A failing call must show up as a FAILED check with its output, not end the script silently.
run() { timeout 120 "$inspector" --cli "$bin" serve --data-dir "$data" "$@" 2>>"$work/inspector.err" || { echo "inspector exited $?: $(tail -c 1500 "$work/inspector.err")"; }; }

passed=0; failed=0
check() { # name, python expression over the JSON in $out
  if python3 -c "import json,sys; d=json.loads(sys.stdin.read()); sys.exit(0 if ($2) else 1)" <<<"$out"; then
    passed=$((passed+1)); echo "ok: $1"
  else
    failed=$((failed+1)); echo "FAILED: $1"; echo "$out" | head -c 2000; echo
  fi
}

out=$(run --method tools/list)
check "tools/list shows the six tools" "sorted(t['name'] for t in d['tools']) == ['memory_delete','memory_get','memory_list','memory_search','memory_store','memory_update']"
check "tools/list advertises bounded schemas" "all(t['inputSchema'].get('additionalProperties') is False for t in d['tools'])"

out=$(run --method tools/call --tool-name memory_store --tool-arg 'content=the inspector was here')
check "memory_store succeeds" "d['isError'] is False and d['structuredContent']['status'] == 'active'"
id=$(python3 -c "import json,sys; print(json.loads(sys.stdin.read())['structuredContent']['id'])" <<<"$out" 2>/dev/null || echo none)

out=$(run --method tools/call --tool-name memory_search --tool-arg 'query=inspector')
check "memory_search finds it" "d['structuredContent']['results'][0]['memory']['id'] == '$id'"

out=$(run --method tools/call --tool-name memory_get --tool-arg "id=$id")
check "memory_get returns it verified" "d['structuredContent']['memory']['verified'] is True"

# --- the same Inspector over Streamable HTTP: serve-http with a bearer token, reached through a
# header-adding proxy (the Inspector CLI cannot send headers).
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_data="$work/http-data"
token=$("$bin" token issue local --data-dir "$http_data" 2>/dev/null)
daemon_port=$(port); proxy_port=$(port)
"$bin" serve-http --data-dir "$http_data" --listen "127.0.0.1:$daemon_port" 2>"$work/http.log" &
daemon=$!
MEMWARDEN_TOKEN="$token" python3 "$(dirname "$0")/bearer_proxy.py" "$proxy_port" "127.0.0.1:$daemon_port" &
proxy=$!
trap 'kill $daemon $proxy 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$proxy_port") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$daemon_port") 2>/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$proxy_port/mcp"
run_http() { timeout 120 "$inspector" --cli "$url" --transport http "$@" 2>>"$work/inspector.err" || { echo "inspector exited $?: $(tail -c 1500 "$work/inspector.err")"; }; }
out=$(run_http --method tools/list)
check "over HTTP: tools/list shows the six tools" "sorted(t['name'] for t in d['tools']) == ['memory_delete','memory_get','memory_list','memory_search','memory_store','memory_update']"
out=$(run_http --method tools/call --tool-name memory_store --tool-arg 'content=the inspector came over http')
check "over HTTP: memory_store succeeds" "d['isError'] is False and d['structuredContent']['status'] == 'active'"
out=$(run_http --method tools/call --tool-name memory_search --tool-arg 'query=inspector')
check "over HTTP: memory_search finds it" "d['structuredContent']['results'][0]['memory']['content'] == 'the inspector came over http'"
# Without the proxy's header, the daemon refuses the Inspector.
url="http://127.0.0.1:$daemon_port/mcp"
out=$(run_http --method tools/list 2>&1 | head -c 2000 | python3 -c 'import json,sys; print(json.dumps({"text": sys.stdin.read()}))')
check "over HTTP without a token: refused" "'UNAUTHENTICATED' in d['text'] and 'memory_store' not in d['text']"

echo "interop: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
