#!/usr/bin/env python3
"""CPU time by process while a benchmark runs: Postgres, Tansu, the relay
processes (examples/relay_worker) and outbox-bench itself.

    scripts/cpu_by_process.py sample LOG [INTERVAL_S]   # until killed
    scripts/cpu_by_process.py windows LOG               # summarize

`sample` appends one line per interval (default 0.05 s): monotonic time,
machine-wide busy and idle jiffies (/proc/stat), then the cumulative CPU
jiffies (utime + stime) of each process group, counting exited processes at
their last reading. It costs about 2% of one core.

`windows` finds the stretches where the relay processes use more than a
quarter of a core (a drain) and prints, for each, its length and the CPU
seconds spent machine-wide and by each group (`other`: everything else on
the machine, which should be near zero). With two cores a 1 s window
holds at most 2 CPU seconds; `idle` is what was left unused.

Used to see where relay_scaling's CPU goes:

    scripts/cpu_by_process.py sample /tmp/cpu.log & SAMPLER=$!
    scripts/bench.sh relay_scaling; kill $SAMPLER
    scripts/cpu_by_process.py windows /tmp/cpu.log
"""
import os
import sys
import time

GROUPS = {"relay_worker": "relay", "tansu": "tansu", "postgres": "postgres", "outbox-bench": "bench"}
ORDER = ["tansu", "relay", "postgres", "bench"]
TICKS = os.sysconf("SC_CLK_TCK")


def sample(log_path, interval):
    group_of = {}  # pid -> group, or None when not watched
    last = {}  # pid -> (group, cumulative jiffies)
    with open(log_path, "a", encoding="ascii") as log:
        while True:
            now = time.monotonic()
            with open("/proc/stat", encoding="ascii") as stat:
                values = [int(v) for v in stat.readline().split()[1:]]
            idle = values[3] + values[4]
            busy = sum(values[:8]) - idle
            for pid in filter(str.isdigit, os.listdir("/proc")):
                if pid not in group_of:
                    try:
                        group_of[pid] = GROUPS.get(os.path.basename(os.readlink(f"/proc/{pid}/exe")))
                    except OSError:
                        group_of[pid] = None
                group = group_of[pid]
                if group is None:
                    continue
                try:
                    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                last[pid] = (group, int(fields[11]) + int(fields[12]))
            totals = dict.fromkeys(ORDER, 0)
            for group, jiffies in last.values():
                totals[group] += jiffies
            log.write(f"{now:.3f} {busy} {idle} " + " ".join(str(totals[g]) for g in ORDER) + "\n")
            log.flush()
            time.sleep(interval)


def windows(log_path):
    with open(log_path, encoding="ascii") as log:
        rows = [[float(v) for v in line.split()] for line in log if line.strip()]
    relay = 2 + 1 + ORDER.index("relay")
    found, current = [], None
    for before, after in zip(rows, rows[1:]):
        rate = (after[relay] - before[relay]) / TICKS / (after[0] - before[0])
        if rate > 0.25:
            current = [before, after] if current is None else [current[0], after]
        elif current is not None and after[0] - current[1][0] > 0.15:
            found.append(current)
            current = None
    if current is not None:
        found.append(current)
    for start, end in found:
        length = end[0] - start[0]
        if length < 0.3:
            continue
        spent = [(end[i] - start[i]) / TICKS for i in range(1, len(start))]
        groups = " ".join(f"{g}={s:.2f}" for g, s in zip(ORDER, spent[2:]))
        other = spent[0] - sum(spent[2:])
        print(f"window {length:.2f} s: busy={spent[0]:.2f} idle={spent[1]:.2f} {groups} other={other:.2f}")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "sample":
        sample(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.05)
    elif len(sys.argv) == 3 and sys.argv[1] == "windows":
        windows(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
