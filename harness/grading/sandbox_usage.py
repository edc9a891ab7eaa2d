"""What one program uses, summed over all of its processes: CPU time, memory, processes.

An rlimit caps one process; a program that starts four children gets four times the CPU. So the
judge meters the program as a whole, in the best way the machine allows:

- a cgroup of its own, where the judge can make one (root, cgroupfs writable): the kernel caps the
  program's memory (memory.max / memory.limit_in_bytes; the OOM killer acts inside the group) and
  processes (pids.max), and counts its CPU (cpu.stat / cpuacct.usage). Works on cgroup v2, v1 and
  the v1/v2 hybrid (each resource from the hierarchy that has it). The judge's spawner lives in the
  group, so every worker is born there (it would cost milliseconds of waiting to move one in);
- otherwise, polling: the CPU and resident memory of every live descendant of the judge (orphans
  come back to it: it is pid 1 of its pid namespace or a child subreaper), plus the CPU of the ones
  it reaped during this program; the judge kills the program when a sum passes its cap.

The judge checks the CPU sum every 0.1 s while it waits on the program, so a program ends at most
about that much past its cap. Standard library only (the judge loads this file as a module).
"""

from __future__ import annotations

import os

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def hierarchies(cgroup: str | None = None, mountinfo: str | None = None) -> list[tuple[str, set[str], str]]:
    """(version, controllers, this process's cgroup directory) for each mounted cgroup hierarchy, from
    /proc/self/cgroup and /proc/self/mountinfo (or the given texts of those files)."""
    cgroup = _read("/proc/self/cgroup") if cgroup is None else cgroup
    mountinfo = _read("/proc/self/mountinfo") if mountinfo is None else mountinfo
    own: dict = {}
    for line in cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        own[frozenset(controllers.split(",")) if controllers else "v2"] = path
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        dash = fields.index("-")
        root, mountpoint, fstype, options = fields[3].rstrip("/"), fields[4], fields[dash + 1], fields[dash + 3]
        if fstype == "cgroup2":
            key = "v2"
        elif fstype == "cgroup":
            key = next((k for k in own if k != "v2" and k <= set(options.split(","))), None)
        else:
            continue
        path = own.get(key)
        if path is None or not (path + "/").startswith(root + "/"):
            continue  # this process's group is outside what is mounted here
        controllers = set() if key == "v2" else set(key)
        found.append(("v2" if key == "v2" else "v1", controllers, mountpoint + path[len(root) :]))
    return found


class ProgramGroup:
    """A cgroup per judge, in each hierarchy that gives one of: CPU time, a memory cap, a process cap.

    Made once per judge (named by the harness, so that it can remove it after killing a judge) and
    reused by each of its programs, one at a time; CPU time and OOM kills are counted from each
    program's start."""

    def __init__(self, name: str):
        self.name = name
        self.dirs: list[str] = []
        self.cpu = self.memory = self.pids = None
        self.v2_cpu = False
        for version, controllers, parent in hierarchies():
            wanted = (
                version == "v2"
                or (self.cpu is None and "cpuacct" in controllers)
                or (self.memory is None and "memory" in controllers)
                or (self.pids is None and "pids" in controllers)
            )
            if not wanted:
                continue
            path = os.path.join(parent, name)
            try:
                os.makedirs(path, exist_ok=True)
            except OSError:
                continue
            self.dirs.append(path)
            files = set(os.listdir(path))
            if version == "v2":
                if "cpu.stat" in files:
                    self.cpu, self.v2_cpu = path, True
                if "memory.max" in files:
                    self.memory = path
            elif "cpuacct.usage" in files and not self.v2_cpu:
                self.cpu = path
            if "memory.limit_in_bytes" in files and self.memory is None:
                self.memory = path
            if "pids.max" in files and self.pids is None:
                self.pids = path
        used = {self.cpu, self.memory, self.pids}
        for path in [d for d in self.dirs if d not in used]:  # e.g. cpuacct, where v2 counts CPU
            self.dirs.remove(path)
            os.rmdir(path)
        self._cpu0 = self._oom0 = 0.0

    @property
    def complete(self) -> bool:
        """Whether the kernel caps memory and counts CPU for the whole program."""
        return self.cpu is not None and self.memory is not None

    def add(self, pid: int) -> None:
        """Move `pid` (the spawner, once) into the group; what it forks is born there."""
        for path in self.dirs:
            _write(os.path.join(path, "cgroup.procs"), str(pid))

    def start(self, memory_bytes: int, processes: int) -> None:
        """This program's caps (the group also holds the idle spawner: one process, a few MB)."""
        if self.memory is not None:
            v2 = os.path.exists(os.path.join(self.memory, "memory.max"))
            _write(os.path.join(self.memory, "memory.max" if v2 else "memory.limit_in_bytes"), str(memory_bytes))
        if self.pids is not None:
            _write(os.path.join(self.pids, "pids.max"), str(processes + 1))
        self._cpu0 = self._oom0 = 0
        self._cpu0, self._oom0 = self.cpu_seconds(), self.oom_kills()

    def cpu_seconds(self) -> float:
        if self.cpu is None:
            return 0.0
        if self.v2_cpu:
            stat = dict(line.split() for line in _read(os.path.join(self.cpu, "cpu.stat")).splitlines())
            return int(stat["usage_usec"]) / 1e6 - self._cpu0
        return int(_read(os.path.join(self.cpu, "cpuacct.usage"))) / 1e9 - self._cpu0

    def oom_kills(self) -> int:
        if self.memory is None:
            return 0
        name = "memory.events" if os.path.exists(os.path.join(self.memory, "memory.events")) else "memory.oom_control"
        stat = dict(line.split() for line in _read(os.path.join(self.memory, name)).splitlines())
        return int(stat.get("oom_kill", 0)) - int(self._oom0)

    def remove(self) -> None:
        for path in self.dirs:
            try:
                os.rmdir(path)
            except OSError:
                pass


def make_group(name: str) -> ProgramGroup | None:
    """The judge's cgroup, or None where the kernel would not cap memory and count CPU for it."""
    try:
        group = ProgramGroup(name)
    except (OSError, ValueError, KeyError):
        return None
    if group.complete:
        return group
    group.remove()
    return None


class Meter:
    """The program's summed CPU and memory, from its cgroup or by polling the judge's descendants.

    `spawner` (with a `pid`, which changes if it is restarted) is the judge's long-lived worker
    factory: a descendant of the judge but not the program's, so polling leaves out its memory and
    counts its CPU from the start of each program (a worker's CPU moves into the spawner's once the
    spawner reaps it)."""

    spawner = None  # set by the judge once it has started one

    def __init__(self, group: ProgramGroup | None, judge_pid: int):
        self.group, self.judge_pid = group, judge_pid
        self._cpu0 = 0.0

    def adopt(self, pid: int) -> None:
        if self.group is not None:
            self.group.add(pid)

    def start(self, memory_bytes: int, processes: int) -> None:
        """Before the program's worker is forked: its caps, and the CPU counted so far."""
        self.memory_bytes = memory_bytes
        if self.group is not None:
            self.group.start(memory_bytes, processes)
        else:
            self._cpu0 = 0.0
            self._cpu0 = self.cpu_seconds()

    def cpu_seconds(self) -> float:
        if self.group is not None:
            return self.group.cpu_seconds()
        found = self._program_processes()
        return _reaped_cpu(self.judge_pid) + sum(cpu for cpu, _ in found.values()) - self._cpu0

    def memory_exceeded(self) -> bool:
        """Over the memory cap: OOM kills in the cgroup, or summed resident memory when polling."""
        if self.group is not None:
            return self.group.oom_kills() > 0
        found = self._program_processes()
        found.pop(self.spawner.pid, None)
        return sum(rss for _, rss in found.values()) > self.memory_bytes

    def _program_processes(self) -> dict[int, tuple[float, int]]:
        """The judge's descendants but the one asking: the judge's test runner (a child it forks per
        program, which calls this) works for the tests, not for the program."""
        found = _descendants(self.judge_pid)
        found.pop(os.getpid(), None)
        return found


def _reaped_cpu(pid: int) -> float:
    """CPU seconds of the children `pid` has reaped (its cutime + cstime): the same from any process."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat[stat.rindex(")") + 2 :].split()
    return sum(int(f) for f in fields[13:15]) / _CLOCK_TICKS


def _descendants(root: int) -> dict[int, tuple[float, int]]:
    """pid -> (CPU seconds including reaped children, resident bytes) of every live descendant of `root`."""
    parent, usage = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = _read(f"/proc/{entry}/stat")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parent[int(entry)] = int(fields[1])
        ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        usage[int(entry)] = (ticks / _CLOCK_TICKS, int(fields[21]) * _PAGE)
    found: dict[int, tuple[float, int]] = {}
    for pid in parent:
        ancestor, seen = parent.get(pid), 0
        while ancestor and ancestor != root and seen < 4096:
            ancestor, seen = parent.get(ancestor), seen + 1
        if ancestor == root:
            found[pid] = usage[pid]
    return found


def remove_groups(name: str, wait_s: float = 2.0) -> None:
    """Remove the cgroup `name` under this process's group in every hierarchy: the harness does this
    for a judge it had to kill, whose processes may take a moment to leave it (EBUSY until then)."""
    import errno
    import time

    end = time.monotonic() + wait_s
    for _, _, parent in hierarchies():
        while True:
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError as exc:
                if exc.errno == errno.EBUSY and time.monotonic() < end:
                    time.sleep(0.02)
                    continue
            break


def remove_stale_groups(prefix: str) -> None:
    """Remove groups `<prefix><pid>-...` left by harness processes that are gone (killed before they
    could clean up); a group still in use is never empty, so rmdir leaves it."""
    for _, _, parent in hierarchies():
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            pid = name[len(prefix) :].split("-", 1)[0]
            if name.startswith(prefix) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                try:
                    os.rmdir(os.path.join(parent, name))
                except OSError:
                    pass
