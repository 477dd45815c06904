#!/usr/bin/env bash
# Whole-process figures of the entente CLI and node on real STIX: run.sh BUNDLE (from
# make_bundle.py). Starts a throwaway node, publishes BUNDLE, exports it back, looks up
# one value that a compound pattern names, and prints the node's memory.
set -euo pipefail
E=${ENTENTE:-target/release/entente}
D=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$D"' EXIT
$E init --dir "$D/hq" --id bench.hq --listen 127.0.0.1:0 --with-certs > /dev/null
printf '\n[[client]]\nid = "analyst.bench"\nrole = "analyst"\n' >> "$D/hq/entente.toml"
$E serve --config "$D/hq/entente.toml" > "$D/serve.out" 2> "$D/serve.err" &
PID=$!
for i in $(seq 1 100); do grep -q " serving on " "$D/serve.out" && break; sleep 0.1; done
ADDR=$(sed -n 's/.* serving on //p' "$D/serve.out" | head -1)
$E certs client --dir "$D/hq/certs" --id analyst.bench --node "$ADDR" --node-id bench.hq > /dev/null
C="$D/hq/certs/analyst.bench.toml"
echo "== publish"
/usr/bin/time -f "wall %e s, cpu %U+%S s, max rss %M KiB" $E publish --config "$C" --tlp green "$1" 2>&1 | tail -2
echo "== export"
/usr/bin/time -f "wall %e s, cpu %U+%S s, max rss %M KiB" $E export --config "$C" --output "$D/out.json" 2>&1 | tail -2
echo "exported objects: $(python3 -c "import json;print(len(json.load(open('$D/out.json'))['objects']))")"
echo "== query --value (a value named by a compound pattern)"
/usr/bin/time -f "wall %e s, cpu %U+%S s, max rss %M KiB" $E query --config "$C" --value 113.10.246.30 --limit 5 2>&1 | tail -2
grep -E "VmHWM|VmRSS" /proc/$PID/status
