"""A private network namespace whose loopback is shaped like a slow link (Linux).

    ns = ShapedLoopback.create(rate_bps=100e6, delay_s=None, mtu=1500,
                               what="hardware.link.rate=100mbit")   # or raises LinkUnavailable
    with ns.entered():   # this thread is inside: sockets opened and processes started here
        ...              # (the rendezvous store, the ranks) live in the namespace
    ns.close()

How. unshare(CLONE_NEWNET) moves the calling *thread* into a new network namespace, which has
only a loopback, down (CAP_SYS_ADMIN). There `ip link set lo up mtu M` brings it up with an
Ethernet's MTU (the loopback's own is 65536), and `tc qdisc add dev lo root tbf rate R ...`
puts a token bucket on it (iproute2, CAP_NET_ADMIN); with a delay, netem is the root and the
token bucket its child, as in tc-netem(8). setns() then brings the thread back where it came
from, so the rest of the launcher keeps the host's network (an MLflow server, say). Every
packet between two sockets on this namespace's 127.0.0.1, both directions, passes the one
token bucket: the ranks share one link of rate R (suite/costmodel.py's `shared` link).

Teardown is the kernel's: a network namespace lives while something refers to it (a thread
in it, an open descriptor of it, a socket opened in it) and is freed with the last. The
launcher holds one descriptor (`close`), the store's socket and server thread (gone with the
store) and the ranks (which exit with the launcher, suite/launch.py), so nothing of the
namespace outlives the job, however it ends: a failure, Ctrl-C, a SIGKILLed launcher.

What the machine lacks (Linux, the tools, a capability, netem) is refused by `create` with a
LinkUnavailable naming it, before any rank starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import subprocess
import sys

from suite.config import ConfigError
from suite.costmodel import rate_label

CLONE_NEWNET = 0x40000000  # <sched.h>
NS_PATH = "/proc/thread-self/ns/net"  # the calling thread's (not the process's) namespace
TOOLS = ("ip", "tc")
# tbf needs a bucket that holds at least the bytes arriving between two of its timer ticks;
# a larger one lets an idle link pass that much at loopback speed, which makes messages
# smaller than the bucket faster than the link. 2 ms of the rate, at least 32 KiB, keeps the
# full rate at 100 Mbit/s and 1 Gbit/s on a loaded 2-core machine; 0.5 ms (62.5 kB at 1 Gbit/s)
# fell to 40% of it there (docs/performance.md, "Shaped links").
BURST_S, MIN_BURST_BYTES = 2e-3, 32 * 1024
QUEUE_LATENCY = "100ms"  # tbf's queue: packets waiting longer than this are dropped
TC_TIMEOUT_S = 10.0


class LinkUnavailable(ConfigError):
    """The machine cannot shape a link: the message says what is missing."""


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns(CLONE_NEWNET): {os.strerror(e)}")


def namespace_inode(path: str = NS_PATH) -> int:
    return os.stat(path).st_ino


def burst_bytes(rate_bps: float) -> int:
    return max(MIN_BURST_BYTES, int(rate_bps / 8 * BURST_S))


def netem_limit(rate_bps: float | None, delay_s: float, mtu: int) -> int:
    """netem's queue in packets: what is in flight during the delay at the rate, twice over
    (its default of 1000 packets drops at 1 Gbit/s and 20 ms); without a rate, loopback speed
    is not known, so a generous 100,000."""
    if rate_bps is None:
        return 100_000
    return max(1000, int(4 * rate_bps / 8 * delay_s / mtu))


def shaping_commands(rate_bps: float | None, delay_s: float | None, mtu: int) -> list[list[str]]:
    """The ip/tc commands that shape this namespace's loopback (run inside it)."""
    cmds = [["ip", "link", "set", "lo", "up", "mtu", str(mtu)]]
    tbf = ["tbf", "rate", f"{int(rate_bps)}bit", "burst", str(burst_bytes(rate_bps or 0)),
           "latency", QUEUE_LATENCY] if rate_bps else None
    if delay_s:
        cmds.append(["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "netem",
                     "delay", f"{round(delay_s * 1e6)}us",
                     "limit", str(netem_limit(rate_bps, delay_s, mtu))])
        if tbf:
            cmds.append(["tc", "qdisc", "add", "dev", "lo", "parent", "1:1", "handle", "10:",
                         *tbf])
    elif tbf:
        cmds.append(["tc", "qdisc", "add", "dev", "lo", "root", *tbf])
    return cmds


def check_tools(what: str) -> None:
    if not sys.platform.startswith("linux"):
        raise LinkUnavailable(f"{what}: shaping a link needs Linux network namespaces; this is "
                              f"{sys.platform}; unset hardware.link.rate and hardware.link.delay")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise LinkUnavailable(
            f"{what}: needs the {' and '.join(f'`{t}`' for t in missing)} command"
            f"{'s' if len(missing) > 1 else ''} (iproute2), not found on PATH; install "
            "iproute2, or unset hardware.link.rate and hardware.link.delay")


def _explain(what: str, cmd: list[str], stderr: str) -> str:
    said = " ".join(stderr.split()) or "no message"
    if "netem" in cmd and ("unknown" in said.lower() or "no such file" in said.lower()):
        return (f"{what}: hardware.link.delay needs the kernel's netem queueing discipline "
                f"(sch_netem), which this kernel does not have (tc: {said}); unset "
                "hardware.link.delay (a rate alone needs only tbf)")
    if "not permitted" in said.lower():
        return (f"{what}: `{' '.join(cmd)}` was refused ({said}): shaping the loopback needs "
                "CAP_NET_ADMIN; run as root or grant it, or unset hardware.link.rate and "
                "hardware.link.delay")
    return f"{what}: `{' '.join(cmd)}` failed: {said}"


class ShapedLoopback:
    """A network namespace with a shaped loopback, held by one open descriptor."""

    def __init__(self, fd: int, inode: int, description: str):
        self._fd, self.inode, self.description = fd, inode, description

    @classmethod
    def create(cls, *, rate_bps: float | None, delay_s: float | None, mtu: int,
               what: str) -> ShapedLoopback:
        check_tools(what)
        host = os.open(NS_PATH, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc().unshare(CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                need = ("CAP_SYS_ADMIN; run as root or grant it, or unset hardware.link.rate "
                        "and hardware.link.delay") if e in (errno.EPERM, errno.EACCES) else \
                    "network namespaces (CONFIG_NET_NS)"
                raise LinkUnavailable(f"{what}: cannot create a private network namespace "
                                      f"(unshare: {os.strerror(e)}): that needs {need}")
            fd = None
            try:
                fd = os.open(NS_PATH, os.O_RDONLY | os.O_CLOEXEC)
                inode = os.fstat(fd).st_ino
                for cmd in shaping_commands(rate_bps, delay_s, mtu):
                    # forked from this thread: the command runs inside the new namespace
                    done = subprocess.run([shutil.which(cmd[0]), *cmd[1:]], capture_output=True,
                                          text=True, timeout=TC_TIMEOUT_S)
                    if done.returncode != 0:
                        raise LinkUnavailable(_explain(what, cmd, done.stderr))
            except BaseException:
                if fd is not None:
                    os.close(fd)
                raise
            finally:
                _setns(host)  # this thread back on the host's network, whatever happened
        finally:
            os.close(host)
        parts = [f"rate {rate_label(rate_bps)}" if rate_bps else None,
                 f"delay {delay_s * 1e3:g} ms" if delay_s else None, f"MTU {mtu}"]
        return cls(fd, inode, ", ".join(p for p in parts if p))

    @contextlib.contextmanager
    def entered(self):
        """This thread inside the namespace for the duration (sockets and child processes
        made meanwhile belong to it), then back where it was."""
        if self._fd is None:
            raise RuntimeError("the namespace was closed")
        # multiprocessing starts its resource tracker with the first process it spawns, and
        # the tracker lives as long as this process: started in here, it would hold the
        # namespace for good. Start it (if it is not running) out here.
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        back = os.open(NS_PATH, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(self._fd)
            try:
                yield self
            finally:
                _setns(back)
        finally:
            os.close(back)

    def close(self) -> None:
        """Drop the launcher's descriptor; the kernel frees the namespace once its sockets and
        processes are gone too."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):  # a launcher that failed between create and close
        with contextlib.suppress(Exception):  # at interpreter exit `os` may be gone already
            self.close()

    @property
    def name(self) -> str:
        return f"net:[{self.inode}]"


def holders(inode: int) -> list[str]:
    """What still refers to the namespace `inode`: '<pid>/task/<tid>' for a thread in it,
    '<pid>/fd/<n>' for an open descriptor of it, and 'self/socket/<n>' for a socket of this
    process opened in it (SIOCGSKNS; another process's sockets cannot be asked, but a process
    holding one is in the list already unless it has moved out, as the launcher does).
    Empty: nothing does, and the kernel has freed the namespace."""
    target, found = f"net:[{inode}]", []
    for pid in filter(str.isdigit, _listdir("/proc")):
        for tid in _listdir(f"/proc/{pid}/task"):
            if _readlink(f"/proc/{pid}/task/{tid}/ns/net") == target:
                found.append(f"{pid}/task/{tid}")
        for fd in _listdir(f"/proc/{pid}/fd"):
            if _readlink(f"/proc/{pid}/fd/{fd}") == target:
                found.append(f"{pid}/fd/{fd}")
    found += [f"self/socket/{fd}" for fd in _own_sockets_in(inode)]
    return found


SIOCGSKNS = 0x894C  # <linux/sockios.h>: a descriptor of the socket's network namespace


def _own_sockets_in(inode: int) -> list[int]:
    import fcntl

    out = []
    for name in _listdir("/proc/self/fd"):
        if not (_readlink(f"/proc/self/fd/{name}") or "").startswith("socket:"):
            continue
        try:
            ns = fcntl.ioctl(int(name), SIOCGSKNS)
        except OSError:
            continue
        try:
            if os.fstat(ns).st_ino == inode:
                out.append(int(name))
        finally:
            os.close(ns)
    return out


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:  # a process that exited meanwhile, or one we may not read
        return []


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
