#!/usr/bin/env bash
# Runs schemathesis with every check against `oncely serve` on a fresh SQLite file, with an
# API key, and fails on any failure. Needs target/debug/oncely (built by `cargo test`) and
# schemathesis (`st`, from PyPI) on PATH or in $ONCELY_ST.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
oncely="${ONCELY_BIN:-$here/../target/debug/oncely}"
st="${ONCELY_ST:-st}"
work="$(mktemp -d)"
port="${ONCELY_SCHEMATHESIS_PORT:-18480}"
hooks_port=$((port + 2))
db="sqlite://$work/oncely.db"
ONCELY_SCHEMATHESIS_TOKEN="$("$oncely" keys --db "$db" create --tenant schemathesis --role submit,read,operate 2>/dev/null)"
export ONCELY_SCHEMATHESIS_TOKEN
# Keys required (the default takes a business key for payments, whose reuse with another
# body is a 422 no generator can foresee); limits off so the run measures the API.
"$oncely" serve --db "$db" --listen "127.0.0.1:$port" --sim-listen 127.0.0.1:0 \
  --webhook-sim-listen "127.0.0.1:$hooks_port" --require-idempotency-key --rate-limit 0 \
  --uploads-dir "$work/uploads" >"$work/serve.log" 2>&1 &
serve=$!
trap 'kill $serve 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/healthz', timeout=1)" 2>/dev/null && break
  sleep 0.1
done
cd "$work"
SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$here" \
  "$st" --config-file "$here/schemathesis.toml" run "http://127.0.0.1:$port/openapi.json" \
  --checks all --seed "${ONCELY_SCHEMATHESIS_SEED:-2026}"
