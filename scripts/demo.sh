#!/usr/bin/env bash
# Builds rcr, starts a small Python program that counts, checkpoints it
# (the program is killed), restores it with the same pid, and shows that it
# goes on counting from where it was.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p rcr
rcr=target/release/rcr
work=$(mktemp -d /tmp/rcr-demo.XXXXXX)
trap 'kill -9 "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

cat > "$work/counter.py" <<'PY'
import time
n = 0
while True:
    n += 1
    print(f"count {n}", flush=True)
    time.sleep(0.2)
PY
cd "$work"
setsid python3 counter.py </dev/null >counter.log 2>&1 &
pid=$!
sleep 1.5
echo "== started python3 as pid $pid; last line: $(tail -n1 counter.log)"

"$OLDPWD/$rcr" dump --tree "$pid" -D ckpt
wait "$pid" 2>/dev/null || true
echo "== dumped into $work/ckpt ($(du -sh ckpt | cut -f1)); pid $pid is gone: $(kill -0 "$pid" 2>/dev/null && echo no || echo yes)"
before=$(tail -n1 counter.log)

restored=$("$OLDPWD/$rcr" restore -D ckpt)
echo "== restored as pid $restored"
sleep 1.5
echo "== before the checkpoint: $before; now: $(tail -n1 counter.log)"
"$OLDPWD/$rcr" show -D ckpt | python3 -c 'import json,sys; t=json.load(sys.stdin)["processes"][0]["threads"][0]; print("== it was stopped at", t["rip"], t["where"].get("symbol"), "-", t["where"].get("instruction"))'
