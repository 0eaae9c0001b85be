#!/usr/bin/env bash
# Smoke test of what `npm start` runs, from the compiled build: the local deployment with its
# embedded PostgreSQL must print working URLs and keys, issue a token, and stop cleanly on SIGINT
# without leaving a PostgreSQL server behind. Needs `npm run build` first. Bounded: ~60 s at most.
set -euo pipefail
cd "$(dirname "$0")/../.."

# Exit codes of the compiled CLI: 2 for a wrong call or missing configuration, 0 for help.
expect_exit() {
  local want=$1; shift
  local got=0
  env -u KEYHOLE_DATABASE_URL node bin/keyhole "$@" >/dev/null 2>&1 || got=$?
  [ "$got" = "$want" ] || { echo "keyhole $* exited $got, expected $want"; exit 1; }
}
expect_exit 0 --help
expect_exit 2 no-such-command
expect_exit 2 tokens list --cell cell1

workdir=$(mktemp -d /tmp/keyhole-smoke-XXXXXX)
chmod 755 "$workdir" # as root, the embedded server runs as OS user postgres and must enter it
out="$workdir/out.txt"
cleanup() {
  if [ -n "${pid:-}" ] && kill -0 "$pid" 2>/dev/null; then kill -INT "$pid" || true; sleep 2; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$workdir"
}
trap cleanup EXIT

: >"$out"
env -u KEYHOLE_DATABASE_URL node dist/apps/cli/src/main.js local --data-dir "$workdir/local" --api-port 0 --proxy-ports 0,0 >"$out" 2>&1 &
pid=$!

for _ in $(seq 1 120); do
  grep -q 'keyhole is running' "$out" && break
  kill -0 "$pid" 2>/dev/null || { echo "npm start exited early:"; cat "$out"; exit 1; }
  sleep 0.5
done
grep -q 'keyhole is running' "$out" || { echo "npm start did not come up in 60 s:"; cat "$out"; exit 1; }

api=$(awk '/token API:/ {print $3}' "$out")
agent=$(awk '/agent cell1:/ {print $3}' "$out")
operator=$(awk '/operator \(every cell\):/ {print $4}' "$out")

status=$(curl -s -o "$workdir/ready.json" -w '%{http_code}' "$api/readyz")
[ "$status" = 200 ] || { echo "readyz answered $status"; exit 1; }
status=$(curl -s -o "$workdir/openapi.json" -w '%{http_code}' "$api/v1/openapi.json")
[ "$status" = 200 ] || { echo "openapi answered $status"; exit 1; }
proxy=$(awk '/cell1 proxy:/ {print $3}' "$out")
status=$(curl -s -o /dev/null -w '%{http_code}' "$proxy/readyz")
[ "$status" = 200 ] || { echo "cell1 proxy readyz answered $status"; exit 1; }
# The web pages are files that the build copies into dist/, beside the compiled code.
for page in vnc_lite.html serial.html keyhole/vnc-lite.js keyhole/serial.js; do
  status=$(curl -s -o /dev/null -w '%{http_code}' "$proxy/$page")
  [ "$status" = 200 ] || { echo "cell1 proxy $page answered $status"; exit 1; }
done

status=$(curl -s -o "$workdir/token.json" -w '%{http_code}' -X POST "$api/v1/cells/cell1/tokens" \
  -H "Authorization: Bearer $agent" -H 'Content-Type: application/json' \
  -d '{"instanceUuid":"6f1c2b7e-3d4a-4b5c-9d8e-7f6a5b4c3d2e","consoleType":"novnc","host":"127.0.0.1","port":5900}')
[ "$status" = 201 ] || { echo "issuing a token answered $status: $(cat "$workdir/token.json")"; exit 1; }
token=$(node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).token)' "$workdir/token.json")

status=$(curl -s -o "$workdir/introspect.json" -w '%{http_code}' -X POST "$api/v1/tokens/introspect" \
  -H "Authorization: Bearer $operator" -H 'Content-Type: application/json' -d "{\"token\":\"$token\"}")
[ "$status" = 200 ] || { echo "introspection answered $status"; exit 1; }

if grep -qF "$token" "$workdir/local/keyhole.log"; then echo "the token reached the log"; exit 1; fi

kill -INT "$pid"
for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$pid" 2>/dev/null; then echo "npm start did not stop on SIGINT"; exit 1; fi
if pgrep -f -- "$workdir/local/pgdata" >/dev/null; then echo "the embedded PostgreSQL is still running"; exit 1; fi
echo "smoke: npm start served readyz, openapi, the web pages, issue (201) and introspect (200), and stopped cleanly"
