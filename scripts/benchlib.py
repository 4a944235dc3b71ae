"""What ironvme's guest benchmarks share: scripts/bench and scripts/bench-export.

Each benchmark is one script run twice: on the host it builds the release binary, boots
ONE guest with qemu/run and runs itself inside with --in-guest; inside, each result is
printed on stdout as one line, MARK followed by a JSON object, which the host collects
(`run_guest`) into DIR/results.json, DIR/table.md and DIR/chart.png.

Here: the guest side's helpers (`sh`, `kernel_nodes`, `publish`, the fio command line and
its JSON), the host side's (`build_release`, `run_guest`, `save`), and the chart's
(`pyplot`, `grouped_bars`, `hbars`). Imported by path (the scripts have no .py suffix
and scripts/ is no package): `sys.path.insert(0, str(Path(__file__).resolve().parent))`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
MARK = "IRONVME-BENCH "
IRONVME = REPO / "target/release/ironvme"


def prog() -> str:
    """The running script's name, for messages ("bench", "bench-export")."""
    return Path(sys.argv[0]).name


# ---------------------------------------------------------------- inside the guest

def sh(cmd: list[str], check: bool = True) -> str:
    """Runs `cmd` and returns its stdout; exits with its stderr if it fails and `check`."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        raise SystemExit(f"{prog()}: {shlex.join(cmd)} failed ({p.returncode}):\n{p.stderr}{p.stdout}")
    return p.stdout


def kernel_nodes(bdf: str) -> tuple[str, str, str]:
    """/dev/nvmeX, /dev/nvmeXn1, /dev/ngXn1 of the controller at `bdf` (bound to nvme)."""
    ctrl = next(n for n in os.listdir(f"/sys/bus/pci/devices/{bdf}/nvme") if n.startswith("nvme"))
    return f"/dev/{ctrl}", f"/dev/{ctrl}n1", f"/dev/{ctrl.replace('nvme', 'ng')}n1"


def busy_ticks() -> int:
    """This machine's busy CPU time so far (all CPUs), in clock ticks: the "cpu" line of
    /proc/stat less idle and iowait (guest time is already in user)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal


def publish(rec: dict, collected: list[dict] | None = None) -> None:
    """Hands one result to the host: a MARK line on stdout (and appends it to `collected`)."""
    if collected is not None:
        collected.append(rec)
    print(MARK + json.dumps(rec), flush=True)


def fio_command(engine: str, node: str, rw: str, qd: int, t: int, size: str, ramp: int = 1) -> list[str]:
    """fio's command line for one time-based run of 4 KiB `rw` at depth `qd` on `node`:
    one job, `ramp` seconds of ramp then `t` seconds measured, over the first `size` bytes,
    JSON output. The asynchronous engines submit and reap in batches of up to `qd` (as
    ironvme does: fio's default submits each I/O with its own syscall, which costs a lot
    under TCG), io_uring with registered buffers and files."""
    # O_DIRECT: the generic char device refuses it (EINVAL) and passthrough never uses the
    # page cache anyway.
    direct = [] if engine == "io_uring_cmd" else ["--direct=1"]
    cmd = ["fio", "--name=bench", f"--filename={node}", f"--ioengine={engine}", *direct, f"--rw={rw}",
           "--bs=4k", f"--iodepth={qd}", "--numjobs=1", "--time_based", f"--runtime={t}", f"--ramp_time={ramp}",
           f"--size={size}", "--norandommap", "--randrepeat=0", "--group_reporting", "--output-format=json"]
    if engine != "pvsync2":
        cmd += [f"--iodepth_batch_submit={qd}", f"--iodepth_batch_complete_max={qd}"]
    if engine == "io_uring":
        cmd += ["--fixedbufs", "--registerfiles"]
    if engine == "io_uring_cmd":
        cmd += ["--cmd_type=nvme", "--fixedbufs"]
    return cmd


def fio_result(out: str, rw: str) -> dict:
    """fio's JSON output (`fio_command`) as {iops, lat_mean_us, lat_p99_us, cpu_percent,
    ios, errors}: the mean of the total latency, the 99th percentile of the completion
    latency, fio's own CPU (user + system, % of one CPU)."""
    # fio may print notes (e.g. "queue depth will be capped at 1" for sync engines) before
    # the JSON document.
    job = json.loads(out[out.index("{"):])["jobs"][0]
    side = job["read" if "read" in rw else "write"]
    pct = side["clat_ns"].get("percentile", {})
    return {"iops": side["iops"], "lat_mean_us": side["lat_ns"]["mean"] / 1000,
            "lat_p99_us": pct.get("99.000000", 0) / 1000,
            "cpu_percent": job.get("usr_cpu", 0) + job.get("sys_cpu", 0),
            "ios": side.get("total_ios"), "errors": job.get("error", 0)}


# ---------------------------------------------------------------- on the host

def build_release() -> None:
    """`cargo build --release --bin ironvme`: the binary the guest runs."""
    print("==== cargo build --release", flush=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "ironvme"], cwd=REPO, check=True)


def tree_ticks(root: int) -> int:
    """CPU time (utime + stime + cutime + cstime, clock ticks) of process `root` and its
    live descendants: what the guest (qemu/run, QEMU) has used so far."""
    parent, ticks = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                v = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d)] = int(v[1])
        ticks[int(d)] = sum(int(x) for x in v[11:15])

    def under(pid: int) -> bool:
        while pid > 1:
            if pid == root:
                return True
            pid = parent.get(pid, 0)
        return False
    return sum(t for pid, t in ticks.items() if under(pid))


class HostNoise:
    """The CPU that processes other than the guest and this script use on the host between
    two `sample`s, in CPUs (cores busy on average): under TCG the guest needs the host's
    cores, so a row measured while other work ran is slower than it should be."""

    def __init__(self, guest_pid: int):
        self.pid = guest_pid
        self.last = self._now()

    def _now(self) -> tuple[float, int, int]:
        t = os.times()
        own = round((t.user + t.system) * os.sysconf("SC_CLK_TCK"))
        return time.monotonic(), busy_ticks(), tree_ticks(self.pid) + own

    def sample(self) -> float | None:
        now = self._now()
        (t0, b0, g0), (t1, b1, g1) = self.last, now
        self.last = now
        if t1 - t0 < 0.5:
            return None
        return round(max(0, (b1 - b0) - (g1 - g0)) / os.sysconf("SC_CLK_TCK") / (t1 - t0), 2)


def run_guest(inner: list[str], timeout: int, qemu_args: list[str] | None = None,
              on_record: Callable[[dict], None] | None = None, host_noise: bool = False) -> tuple[int, list[dict]]:
    """Boots one guest (qemu/run, default topology) running `inner`, passes its output
    through, and returns qemu/run's exit status and the records the guest published.
    `on_record` sees each record as it arrives. With `host_noise`, each record gets
    "host_other_cpus": the CPUs other host processes used since the previous record
    (`HostNoise`)."""
    proc = subprocess.Popen([str(REPO / "qemu/run"), "--tty", "no", "--timeout", str(timeout), *(qemu_args or []),
                             "--"] + inner, cwd=REPO, stdout=subprocess.PIPE, text=True)
    noise = HostNoise(proc.pid) if host_noise else None
    results = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(MARK):
            rec = json.loads(line[len(MARK):])
            if noise:
                rec["host_other_cpus"] = noise.sample()
            results.append(rec)
            if on_record:
                on_record(rec)
        else:
            sys.stdout.write(line)
    return proc.wait(), results


def save(out: Path, meta: dict, results: list[dict], text: str, name: str = "results") -> None:
    """Writes DIR/NAME.json ({"meta", "results"}) and DIR/table.md, and prints the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    (out / "table.md").write_text(text)
    print("\n" + text)


def meta(args, started: float, **extra) -> dict:
    """The run's description for results.json: date, settings, wall time, machine."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "time_s": args.time, "size": args.size,
            "wall_s": round(time.monotonic() - started), "host": os.uname().nodename,
            "commit": head + (" (with uncommitted changes)" if dirty else ""),
            "guest": "QEMU 7.2 TCG, 2 vCPUs, kernel 6.1; controller 0000:00:05.0 (4 KiB LBAs)", **extra}


def targets_table(rows: list[tuple[str, float | None, str, bool | None]]) -> list[str]:
    """The targets as Markdown lines: name, measured value, goal, met (yes/no/-)."""
    lines = ["| target | measured | goal | met |", "| --- | ---: | --- | --- |"]
    for name, value, goal, ok in rows:
        lines.append(f"| {name} | {'-' if value is None else f'{value:.2f}'} | {goal} | "
                     f"{'-' if ok is None else ('yes' if ok else 'no')} |")
    return lines


# ---------------------------------------------------------------- charts

def pyplot():
    """matplotlib.pyplot with the Agg backend, installed from PyPI (pip) if missing; None
    (after saying so) when it cannot be had."""
    try:
        import matplotlib
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"], check=False)
        try:
            import matplotlib
        except ImportError:
            print(f"{prog()}: matplotlib unavailable; no chart", file=sys.stderr)
            return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def grouped_bars(ax, results: list[dict], series: list[str], loads: list[tuple[str, int]], key: str = "engine",
                 value: str = "iops", hatched: Callable[[str], bool] = lambda s: False) -> None:
    """One group of bars per workload (rw, qd), one bar per series (results' `key`),
    height `value`; a missing result is a bar of 0."""
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        vals = [next((r[value] for r in results if (r[key], r["rw"], r["qd"]) == (s, rw, qd)), 0) for rw, qd in loads]
        ax.bar([x + i * width for x in range(len(loads))], vals, width, label=s, hatch="//" if hatched(s) else None)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(loads))])
    ax.set_xticklabels([f"4k {rw}\nQD{qd}" for rw, qd in loads])


def hbars(ax, items: list[tuple[str, float]], highlight: Callable[[str], bool]) -> None:
    """Horizontal bars, first item on top; highlighted ones in C0, the others grey."""
    ax.barh([n for n, _ in items], [v for _, v in items], color=["C0" if highlight(n) else "C7" for n, _ in items])
    ax.invert_yaxis()
