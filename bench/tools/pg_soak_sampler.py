#!/usr/bin/env python3
"""Samples the local PostgreSQL server while an `oncely bench` soak runs on it.

Every second it reads which server processes are autovacuum workers (pg_stat_activity)
and the CPU time of every process (/proc/PID/stat), so it can say, per interval, how
many CPU seconds went to autovacuum, to the client backends and to the `oncely`
processes. Every interval it also reads pg_stat_user_tables and the sizes of oncely's
tables in the bench's scratch database (oncely_bench_*). One CSV row per interval.

    python3 bench/tools/pg_soak_sampler.py OUT.csv [--interval 60] [--seconds 1200]

A process born and gone between two samples (a parallel query's worker, usually) is
not seen: its CPU is missing from the figures, so a growing count of sequential scans
on a table that no CPU figure explains points there.

It stops after --seconds, or when interrupted. It needs psql on PATH and reads the
server at $PGURL (default postgres://postgres@127.0.0.1:5432/test).
"""

import argparse
import csv
import os
import subprocess
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")
URL = os.environ.get("PGURL", "postgres://postgres@127.0.0.1:5432/test")


def psql(sql, db_url=URL):
    out = subprocess.run(
        ["psql", db_url, "-AtF", "\t", "-c", sql], capture_output=True, text=True
    )
    return [line.split("\t") for line in out.stdout.splitlines() if line]


def cpu_ticks():
    """pid -> (comm, utime + stime in ticks) of every process."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(pid)] = (comm, int(fields[11]) + int(fields[12]))
    return found


def scratch_url():
    rows = psql(
        "SELECT datname FROM pg_database WHERE datname LIKE 'oncely_bench_%' "
        "ORDER BY oid DESC LIMIT 1"
    )
    if not rows:
        return None
    base = URL.rsplit("/", 1)[0]
    return f"{base}/{rows[0][0]}"


TABLE_STATS = (
    "SELECT relname, n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count, "
    "seq_scan, idx_scan, n_tup_upd, n_tup_hot_upd, "
    "pg_total_relation_size(relid), pg_indexes_size(relid) "
    "FROM pg_stat_user_tables WHERE relname IN ('oncely_operations', 'oncely_wal') "
    "ORDER BY relname"
)
TABLE_COLUMNS = [
    "live",
    "dead",
    "autovacuums",
    "autoanalyzes",
    "seq_scans",
    "idx_scans",
    "updates",
    "hot_updates",
    "total_mib",
    "index_mib",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--interval", type=float, default=60)
    parser.add_argument("--seconds", type=float, default=1200)
    args = parser.parse_args()
    header = ["at_s", "cpu_autovacuum_s", "cpu_backends_s", "cpu_other_pg_s", "cpu_oncely_s"]
    for table in ("operations", "wal"):
        header += [f"{table}_{column}" for column in TABLE_COLUMNS]
    started = time.monotonic()
    last = cpu_ticks()
    role = {}
    sums = {"autovacuum": 0, "backend": 0, "other": 0, "oncely": 0}
    next_row = started + args.interval
    with open(args.out, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        try:
            while time.monotonic() - started < args.seconds:
                time.sleep(1)
                for pid, kind in psql("SELECT pid, backend_type FROM pg_stat_activity"):
                    role[int(pid)] = (
                        "autovacuum" if kind == "autovacuum worker"
                        else "backend" if kind == "client backend" else "other"
                    )
                now = cpu_ticks()
                for pid, (comm, ticks) in now.items():
                    # A process born since the last sample counts all it used.
                    used = ticks - (last[pid][1] if pid in last else 0)
                    if comm == "postgres":
                        sums[role.get(pid, "other")] += used
                    elif comm.startswith("oncely"):
                        sums["oncely"] += used
                last = now
                if time.monotonic() >= next_row:
                    next_row += args.interval
                    row = [round(time.monotonic() - started)]
                    row += [round(sums[k] / TICKS, 2) for k in ("autovacuum", "backend", "other", "oncely")]
                    sums = dict.fromkeys(sums, 0)
                    db = scratch_url()
                    stats = {r[0]: r[1:] for r in psql(TABLE_STATS, db)} if db else {}
                    for table in ("oncely_operations", "oncely_wal"):
                        values = stats.get(table, [""] * len(TABLE_COLUMNS))
                        row += [
                            round(int(v) / 2**20, 1) if c.endswith("_mib") and v else v
                            for c, v in zip(TABLE_COLUMNS, values)
                        ]
                    out.writerow(row)
                    f.flush()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
