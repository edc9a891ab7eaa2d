"""Where the judge finds its cgroup in each hierarchy: this machine's v1/v2 hybrid, a systemd host on
pure v2, a container with its own cgroup namespace, and v1 with cpu and cpuacct mounted together.
The texts are those files' formats (proc(5)); the expected directories are worked out by hand."""

from __future__ import annotations

from harness.grading.sandbox_usage import hierarchies

HYBRID_CGROUP = """9:name=systemd:/
4:memory:/process_api/748bd
2:cpuacct:/
8:pids:/
0::/
"""
HYBRID_MOUNTS = """31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_the_hybrid_gives_each_v1_controller_and_the_unified_hierarchy():
    assert hierarchies(HYBRID_CGROUP, HYBRID_MOUNTS) == [
        ("v1", {"cpuacct"}, "/sys/fs/cgroup/cpuacct/"),
        ("v1", {"memory"}, "/sys/fs/cgroup/memory/process_api/748bd"),
        ("v1", {"pids"}, "/sys/fs/cgroup/pids/"),
        ("v1", {"name=systemd"}, "/sys/fs/cgroup/systemd/"),
        ("v2", set(), "/sys/fs/cgroup/unified/"),
    ]


def test_pure_v2_gives_the_processs_own_group():
    cgroup = "0::/user.slice/user-0.slice/session-4.scope\n"
    mounts = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate\n"
    assert hierarchies(cgroup, mounts) == [("v2", set(), "/sys/fs/cgroup/user.slice/user-0.slice/session-4.scope")]


def test_a_mount_of_a_subtree_is_followed_and_one_outside_the_group_is_skipped():
    cgroup = "0::/docker/abc\n"
    inside = "1 0 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    elsewhere = "1 0 0:26 /docker/other /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert hierarchies(cgroup, inside) == [("v2", set(), "/sys/fs/cgroup")]
    assert hierarchies(cgroup, elsewhere) == []


def test_v1_with_cpu_and_cpuacct_together_is_one_hierarchy():
    cgroup = "3:cpu,cpuacct:/job\n"
    mounts = "30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,nosuid,cpu,cpuacct\n"
    assert hierarchies(cgroup, mounts) == [("v1", {"cpu", "cpuacct"}, "/sys/fs/cgroup/cpu,cpuacct/job")]
