"""Where a run's CPU goes, process by process: the CPU seconds of every process on the machine
while a command runs, grouped by what each process is (Ray's actors name their processes
``ray::ClassName``).

    python benchmarks/cpu_by_process.py -- clinfo-ray train --config quickstart \\
        --set optim.epochs=2 --set optim.warmup_epochs=1 --set run.output_dir=/tmp/cpu-runs

Samples ``/proc`` every ``--every`` seconds (Linux only) while the command runs: each process's
user + system time, less what it had when first seen if it was running before the command
started. A Ray worker counts under the last name it had other than ``ray::IDLE``. A process's
last sample before it exits is what is counted, so a process shorter than one interval may be
missed and each one's figure may lack up to one interval's CPU. Prints one
line per group (the process title: ``ray::RayTrainWorker``, ``raylet``, ...; the command's own
process is ``command``), then the total and the command's wall time. The machine's other
processes count too: run it on an otherwise idle machine.

Why: on 2 cores a run is bound by CPU, and every process Ray starts for a run (controller,
workers, the helper actors of Ray Train and Ray Data) pays Python's start and its imports.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Seen:
    group: str
    first_cpu: float  # CPU seconds when first seen (kept only if it ran before the command)
    cpu: float


def _cpu_seconds(pid: str) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None  # gone meanwhile
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _group(pid: str, command_pid: int) -> str:
    if int(pid) == command_pid:
        return "command"
    try:
        title = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
    except OSError:
        return "?"
    if title.startswith("ray::"):
        return title.split()[0]
    if not title:  # a kernel thread
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return "?"
    script = next((Path(w).name for w in title.split()[1:] if w.endswith(".py")), "")
    return f"{Path(title.split()[0]).name} {script}".strip()


def measure(command: list[str], every: float) -> tuple[dict[str, float], float]:
    """CPU seconds per group while ``command`` runs, and its wall time."""
    seen: dict[str, Seen] = {}
    before = {p for p in os.listdir("/proc") if p.isdigit()}
    start = time.perf_counter()
    process = subprocess.Popen(command)
    while True:
        done = process.poll() is not None
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            cpu = _cpu_seconds(pid)
            if cpu is None:
                continue
            title = _group(pid, process.pid)
            if pid not in seen:
                seen[pid] = Seen(title, cpu if pid in before else 0.0, cpu)
            entry = seen[pid]
            entry.cpu = max(entry.cpu, cpu)
            # a Ray worker takes its actor's or task's name once it has one (ray::IDLE between)
            if title not in ("?", "ray::IDLE"):
                entry.group = title
        if done:
            break
        time.sleep(every)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"the command failed (exit status {process.returncode}): {command}")
    groups: dict[str, float] = collections.Counter()
    for entry in seen.values():
        groups[entry.group] += entry.cpu - entry.first_cpu
    return dict(groups), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("--min", type=float, default=0.2, help="list groups above this")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    groups, wall = measure(command, args.every)
    ranked = sorted(groups.items(), key=lambda kv: -kv[1])
    print(f"{'CPU s':>8}  process")
    for group, cpu in ranked:
        if cpu >= args.min:
            print(f"{cpu:8.2f}  {group}")
    total = sum(groups.values())
    print(f"{total:8.2f}  total, in {wall:.1f} s of wall time ({os.cpu_count()} cores)")
    print(json.dumps({"wall_s": round(wall, 2), "cpu_s": {g: round(c, 2) for g, c in ranked}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
