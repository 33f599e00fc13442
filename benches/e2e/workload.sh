#!/usr/bin/env bash
# Generates the end-to-end benchmark input: for each day, OUT_DIR/dayNN/ holds
#   couchdb/<db>.json   CouchDB _all_docs dumps (cairn-workload)
#   postgres.sql        plain pg_dump of a pgbench database after a day of transactions
#   volumes.tar         ~300 MB of real files, a few changed per day, tarred deterministically
#
# Usage: benches/e2e/workload.sh OUT_DIR [--scale S] [--days N] [--seed S] [--skip-postgres] [--skip-volumes]
# Needs: bash benches/e2e/setup.sh (postgresql), cargo. Scale 1, 14 days: ~13 GB, ~11 minutes.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }
[[ $# -ge 1 && $1 != -* ]] || usage
OUT=$1; shift
SCALE=1 DAYS=14 SEED=1 DO_PG=1 DO_VOL=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --scale) SCALE=$2; shift 2 ;;
    --days) DAYS=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --skip-postgres) DO_PG=0; shift ;;
    --skip-volumes) DO_VOL=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "workload.sh: unknown argument $1" >&2; usage ;;
  esac
done

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/wl-target}
PG_PORT=${PG_PORT:-15433}
# pgbench transactions per day per unit of -s (each touches one of the 100,000 accounts
# rows per unit): 1500 = ~1.5 % of accounts updated per day.
PG_TX_PER_SCALE=${PG_TX_PER_SCALE:-1500}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
t_start=$SECONDS

echo "== couchdb (cairn-workload, scale $SCALE, $DAYS days, seed $SEED)"
(cd "$ROOT" && cargo build --release -q -p cairn-workload)
"$CARGO_TARGET_DIR/release/cairn-workload" couchdb --out "$OUT" --days "$DAYS" --seed "$SEED" --scale "$SCALE"

if ((DO_PG)); then
  PG_SCALE=$(python3 -c "print(max(1, round(20 * $SCALE)))")
  PG_TX=$((PG_TX_PER_SCALE * PG_SCALE))
  echo "== postgres (pgbench -s $PG_SCALE, $PG_TX transactions/day)"
  PGBIN=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -1)
  [[ -x $PGBIN/initdb ]] || { echo "workload.sh: PostgreSQL not installed; run benches/e2e/setup.sh" >&2; exit 1; }
  PGTMP=$(mktemp -d /tmp/cairn-pg.XXXXXX)
  AS_PG=()
  if [[ $(id -u) -eq 0 ]]; then chown postgres:postgres "$PGTMP"; AS_PG=(runuser -u postgres --); fi
  pg_stop() {
    "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGTMP/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PGTMP"
  }
  trap pg_stop EXIT
  "${AS_PG[@]}" "$PGBIN/initdb" -D "$PGTMP/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  # autovacuum off: the heap order of updated rows (and so the dump's row order) then
  # depends only on the transactions, which pgbench replays from --random-seed.
  "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGTMP/data" -l "$PGTMP/pg.log" -w -t 60 \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PGTMP -c fsync=off -c synchronous_commit=off -c autovacuum=off" \
    start >/dev/null
  export PGHOST=127.0.0.1 PGPORT=$PG_PORT PGUSER=postgres
  createdb bench
  pgbench -i -q -s "$PG_SCALE" bench 2>&1 | tail -1
  for ((day = 1; day <= DAYS; day++)); do
    d=$(printf '%s/day%02d' "$OUT" "$day")
    mkdir -p "$d"
    pgbench -n -c 1 -j 1 -t "$PG_TX" --random-seed=$((SEED * 1000 + day)) bench >"$PGTMP/pgbench.log" 2>&1 \
      || { cat "$PGTMP/pgbench.log" >&2; exit 1; }
    pg_dump --restrict-key=cairnbench -d bench >"$d/postgres.sql.tmp"
    mv "$d/postgres.sql.tmp" "$d/postgres.sql"
    printf '  day%02d postgres.sql %d bytes\n' "$day" "$(stat -c %s "$d/postgres.sql")"
  done
  pg_stop
  trap - EXIT
fi

if ((DO_VOL)); then
  VOL_BYTES=$(python3 -c "print(max(1_000_000, round(300_000_000 * $SCALE)))")
  echo "== volumes ($VOL_BYTES bytes)"
  python3 "$HERE/volumes.py" "$OUT" --days "$DAYS" --bytes "$VOL_BYTES" --seed "$SEED"
fi

echo "== done in $((SECONDS - t_start)) s: $(du -sh "$OUT" | cut -f1) in $OUT"
for ((day = 1; day <= DAYS; day++)); do
  d=$(printf '%s/day%02d' "$OUT" "$day")
  printf '  %s %s bytes\n' "$(basename "$d")" "$(du -sb "$d" | cut -f1)"
done
