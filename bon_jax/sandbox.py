"""Runs untrusted Python programs (generated code) in contained child processes.

Code-execution rewards run model-written programs. None of them ever runs in the trainer's process:
each program is written to a fresh temporary directory and executed by a separate interpreter that a
small *launcher* (Part 1 of this file, run in a fresh `python -I -S` with only light standard-library
imports) confines first.

What is enforced, and how (every field of `Enforced` reports what a run actually got):

  process       the launcher is started with `subprocess.Popen(start_new_session=True)` (exec, never a
                fork of the trainer, so it is safe with JAX's threads). On timeout it gets SIGTERM and
                kills and reaps its child; after every run (and 2 s after an unanswered SIGTERM) its
                whole process group is SIGKILLed. It dies with the trainer (PR_SET_PDEATHSIG), has
                an alarm() backstop in case the trainer hangs, and is not dumpable (a program of the
                same uid could otherwise open /proc/<pid>/fd/ of the report pipe; a second exit
                report anyway fails the run).
  pid_namespace unshare(CLONE_NEWPID): the program runs under a small init (pid 1 of a new pid
                namespace). When the program ends, init exits and the kernel kills everything left in
                the namespace, so no grandchild (daemonised, setsid'd or forked) survives a run.
  network       unshare(CLONE_NEWNET): a new network namespace with no interface up, not even
                loopback: every connect() fails.
  mount         unshare(CLONE_NEWNS): the root filesystem is re-bound read-only, /tmp, /var/tmp,
                /dev/shm and /run/lock get small private tmpfs, /proc is the new pid namespace's own,
                and the work directory is bound read-write at /tmp/sandbox. Directories the sandbox
                uid may not traverse but the interpreter lives under (a pyenv in /root) are replaced by
                a tmpfs holding only a read-only bind of the interpreter's prefix, which also hides
                the rest of them.
  uid           as root, the program runs as a dedicated unprivileged uid/gid (no supplementary
                groups), one per concurrent run, taken from a pool guarded by flock'ed lock files so
                that concurrent processes never share one. That is what makes RLIMIT_NPROC bite (it is
                per-user and root ignores it) and what keeps the program from signalling the trainer or
                writing anything the trainer owns. After each run every process of that uid is killed
                (kill(-1, SIGKILL) from a helper running as that uid).
  rlimits       RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0, set in
                the forked child just before exec.
  environment   scrubbed: PATH=/usr/local/bin:/usr/bin:/bin, HOME=TMPDIR=the work directory,
                PYTHONHASHSEED=0, PYTHONDONTWRITEBYTECODE=1, UTF-8 locale; nothing else is inherited.
  interpreter   the trainer's base interpreter (not the venv) with `-S -B -P`: that is `python -I`
                (= -E -P -s) with two changes. -S instead of -s: no site-packages at all, so a reward
                never depends on what happens to be pip-installed (programs get the standard library;
                no `exit()`/`quit()` builtins either, `sys.exit` works), and start-up is ~100 ms
                faster. No -E: it would also ignore PYTHONHASHSEED and make the iteration order of
                sets of strings, hence some programs' output, vary from run to run; the environment
                is built here from scratch, so -E has nothing left to protect against.
  wall clock    `timeout_s` from the moment the sandbox is set up; then the whole group is killed.
  output        stdout / stderr are read as they come and truncated to `Limits.output_bytes` each.

Files: work directories are `<tmp>/bon_jax_sbx_*` (or under `work_root`), removed after each run,
timeouts included (not if the trainer itself is SIGKILLed: its runs die with it, their directories
stay). `<tmp>/bon_jax_sandbox.<euid>/` (0700) keeps the uid lock files and the launcher's compiled
code between runs.

Degrading: without root, the launcher first creates a user namespace (unprivileged user namespaces)
and gets the same namespaces inside it, but the program keeps the caller's uid (RLIMIT_NPROC then
counts per user namespace on Linux >= 5.14). Where the kernel refuses a namespace (containers without
CAP_SYS_ADMIN, seccomp), the run goes on without it, a warning is logged once, and `Enforced` says so
(`network_isolated=False`, ...). Without a pid namespace, leftovers are still killed by process group
and, when the uid was dropped, by uid. Without a mount namespace, the uid is only dropped if it can
reach an interpreter (the trainer's, else /usr/bin/python3 or /usr/local/bin/python3, with a
warning), otherwise it runs as root with the rest of the containment; world-writable directories
(/tmp) stay writable to the program.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import sys

try:  # the C module: `signal` would import enum (start-up time of every run)
    import _signal as signal
except ImportError:  # pragma: no cover - other implementations
    import signal

# ---------------------------------------------------------------------------------------------
# Part 1: the launcher. Runs as `python -I -S -c BOOT CODE_FILE --launch CONFIG` (Part 1 compiled
# once and cached, see `_launcher_command`) in its own session, as the trainer's user (root on the
# machines this is built for). Only the light imports above.
# ---------------------------------------------------------------------------------------------

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000

_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_NOATIME = 1024
_MS_NODIRATIME = 2048
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MS_RELATIME = 1 << 21

# statvfs f_flag bits -> mount flags that a remount inside a user namespace must keep (locked flags).
_ST_TO_MS = ((1, _MS_RDONLY), (2, _MS_NOSUID), (4, _MS_NODEV), (8, _MS_NOEXEC),
             (1024, _MS_NOATIME), (2048, _MS_NODIRATIME), (4096, _MS_RELATIME))  # fmt: skip

_SHARED_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_SANDBOX_DIR = "/tmp/sandbox"  # where the work directory appears inside a mount namespace

_libc = None


def _libc_call(name, *args):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if getattr(_libc, name)(*args) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{name}: {os.strerror(e)}")


def _mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)
    _libc_call("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


def _kept_flags(path):
    flags = os.statvfs(path).f_flag
    return sum(ms for st, ms in _ST_TO_MS if flags & st and ms != _MS_RDONLY)


def _traversable_by_others(path):
    """Whether a uid that owns nothing (and is in no group) can reach `path` (dirs need o+x)."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        p = os.sep.join(parts[:i])
        try:
            if not os.stat(p).st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def _blocking_ancestor(path):
    """The first directory on the way to `path` that others cannot traverse (None if none)."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        p = os.sep.join(parts[:i])
        if not os.stat(p).st_mode & 0o001:
            return p
    return None


def _write_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class _Launcher:
    def __init__(self, cfg):
        self.cfg = cfg
        self.report_fd = cfg["report_fd"]
        self.root = os.geteuid() == 0
        self.uid = cfg["uid"] if self.root else None
        self.props = {
            "network_isolated": False,
            "pid_namespace": False,
            "mount_namespace": False,
            "readonly_root": False,
            "ipc_namespace": False,
            "user_namespace": False,
            "uid_dropped": False,
            "uid": None,
            "nproc_limited": False,
            "private_proc": False,
            "python": cfg["python"],
            "warnings": [],
        }
        self.python = cfg["python"]
        self.python_args = list(cfg["python_args"])
        self.workdir_inside = cfg["workdir"]
        self.child = None

    def send(self, **obj):
        os.write(self.report_fd, (repr(obj) + "\n").encode())  # a literal, one line

    def warn(self, msg):
        self.props["warnings"].append(msg)

    # --- namespaces -------------------------------------------------------------------------
    def _unshare(self, flag, key, what):
        try:
            _libc_call("unshare", ctypes.c_int(flag))
        except OSError as e:
            self.warn(f"no {what} ({e.strerror})")
            return False
        self.props[key] = True
        return True

    def enter_namespaces(self):
        if not self.root:
            uid, gid = os.getuid(), os.getgid()
            if self._unshare(_CLONE_NEWUSER, "user_namespace", "user namespace"):
                _write_file("/proc/self/setgroups", "deny")
                _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
                _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
            else:
                return  # without privileges the other namespaces are refused too
        self._unshare(_CLONE_NEWNET, "network_isolated", "network namespace")
        self._unshare(_CLONE_NEWIPC, "ipc_namespace", "ipc namespace")
        self._unshare(_CLONE_NEWPID, "pid_namespace", "pid namespace")
        if self._unshare(_CLONE_NEWNS, "mount_namespace", "mount namespace"):
            try:
                self.setup_mounts()
            except OSError as e:
                # The namespace exists but is only partly set up: say so, keep going.
                self.props["mount_namespace"] = False
                self.warn(f"mount namespace setup failed ({e})")

    def setup_mounts(self):
        uid = self.uid if self.root else os.getuid()
        gid = self.uid if self.root else os.getgid()
        _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
        # Open what must stay reachable before anything is mounted over it.
        work_fd = os.open(self.cfg["workdir"], os.O_PATH | os.O_DIRECTORY)
        prefix = self.cfg["python_prefix"]
        hidden = [d for d in _SHARED_WRITABLE_DIRS if os.path.isdir(d) and not os.path.islink(d)]
        blocker = prefix_fd = None
        if os.path.isdir(prefix):  # (a missing interpreter fails at exec, with a clear error)
            prefix_fd = os.open(prefix, os.O_PATH | os.O_DIRECTORY)
            blocker = _blocking_ancestor(prefix) if self.root else None
            under = [d for d in hidden if prefix == d or prefix.startswith(d + "/")]
            if blocker is None and under:
                blocker = under[0]
        _mount(None, "/", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _kept_flags("/"))
        self.props["readonly_root"] = True
        size = int(self.cfg["tmpfs_bytes"])
        for d in hidden:
            _mount("tmpfs", d, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={size},nr_inodes=4096,mode=1777")
        if blocker is not None and blocker not in hidden:
            _mount("tmpfs", blocker, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=65536,mode=0755")
        if blocker is not None:
            os.makedirs(prefix, 0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{prefix_fd}", prefix, None, _MS_BIND | _MS_REC)
            _mount(None, prefix, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _kept_flags(prefix))
            if blocker not in hidden:
                _mount(None, blocker, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
        if prefix_fd is not None:
            os.close(prefix_fd)
        os.mkdir(_SANDBOX_DIR, 0o700)
        os.chown(_SANDBOX_DIR, uid, gid)
        _mount(f"/proc/self/fd/{work_fd}", _SANDBOX_DIR, None, _MS_BIND)
        _mount(None, _SANDBOX_DIR, None, _MS_REMOUNT | _MS_BIND | _MS_NOSUID | _MS_NODEV)
        os.close(work_fd)
        self.workdir_inside = _SANDBOX_DIR

    # --- uid ------------------------------------------------------------------------------
    def choose_uid(self):
        if self.uid is None:
            if self.root:
                self.warn("running as root without a sandbox uid: RLIMIT_NPROC does not apply")
            return
        reachable = _traversable_by_others(self.python)
        if not self.props["mount_namespace"] and os.path.exists(self.python) and not reachable:
            for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
                if os.path.exists(cand) and _traversable_by_others(os.path.realpath(cand)):
                    self.warn(f"interpreter not reachable by the sandbox uid; using {cand}")
                    self.python = cand
                    self.python_args = [a for a in self.python_args if a != "-P"]
                    self.props["python"] = cand
                    break
            else:
                self.warn("no interpreter reachable by an unprivileged uid: program runs as root")
                self.uid = None
                return
        self.props["uid_dropped"] = True
        self.props["uid"] = self.uid

    # --- the program ----------------------------------------------------------------------
    def spawn_program(self):
        """Forks the program's process; the child sets limits, drops the uid and execs."""
        pid = os.fork()
        if pid:
            self.child = pid
            return pid
        try:
            os.set_inheritable(self.report_fd, False)  # closed by exec: the program cannot report
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            for name, value in self.cfg["rlimits"].items():
                soft, hard = value if isinstance(value, list) else (value, value)
                resource.setrlimit(getattr(resource, name), (soft, hard))
            if self.uid is not None:
                os.setgroups([])
                os.setgid(self.uid)
                os.setuid(self.uid)
            if not self.props["pid_namespace"]:
                _die_with_parent()  # (a uid change clears it: set it after)
            os.chdir(self.workdir_inside)
            env = dict(self.cfg["env"], HOME=self.workdir_inside, TMPDIR=self.workdir_inside)
            argv = [self.python, *self.python_args, self.cfg["program"]]
            os.execve(self.python, argv, env)
        except BaseException as e:  # noqa: B036 - the child must never return into the launcher
            try:
                self.send(error=f"could not start the program: {e!r}")
            finally:
                os._exit(127)

    def wait_program(self, pid):
        """Waits for `pid`, reaping every other child on the way (init's job); sends its status."""
        while True:
            try:
                got, status, ru = os.wait4(-1, 0)
            except ChildProcessError:
                self.send(error="lost the program's process")
                return
            except InterruptedError:
                continue
            if got == pid:
                break
        code = os.waitstatus_to_exitcode(status)
        self.send(
            exit_code=code if code >= 0 else None,
            signal=-code if code < 0 else None,
            cpu_s=ru.ru_utime + ru.ru_stime,
            max_rss_kb=ru.ru_maxrss,
        )

    def run_init(self):
        """Pid 1 of the new pid namespace: private /proc, then the program; exit kills the rest."""
        _die_with_parent()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        if self.props["mount_namespace"]:
            try:
                _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
                self.send(props={"private_proc": True})
            except OSError as e:
                self.send(props={"warnings": [f"no private /proc ({e})"]})
        self.wait_program(self.spawn_program())

    def on_sigterm(self, signum, frame):
        """The parent's timeout: kill our child (init or the program); the normal path reaps it."""
        if self.child is not None:
            try:
                os.kill(self.child, signal.SIGKILL)
            except OSError:  # already gone
                pass

    def main(self):
        # If the trainer dies (even SIGKILL), so do we, and our child with us (init gets the same).
        _die_with_parent()
        if os.getppid() != self.cfg["parent_pid"]:
            return  # it died before the line above
        signal.signal(signal.SIGTERM, self.on_sigterm)
        # Backstop in case the trainer is alive but stuck: kill the program well after its timeout.
        signal.signal(signal.SIGALRM, self.on_sigterm)
        signal.alarm(int(self.cfg["backstop_s"]))
        if self.cfg["namespaces"]:
            self.enter_namespaces()
        else:
            self.warn("namespaces turned off by the caller")
        # Not dumpable (inherited by init, reset by the program's exec): a program of the same uid
        # (no root here) can neither ptrace us nor open /proc/<pid>/fd/<report pipe> to fake a pass.
        _libc_call("prctl", ctypes.c_int(4), ctypes.c_ulong(0), ctypes.c_ulong(0),
                   ctypes.c_ulong(0), ctypes.c_ulong(0))  # fmt: skip
        self.choose_uid()
        limited = self.props["uid_dropped"] or self.props["user_namespace"]
        self.props["nproc_limited"] = limited and "RLIMIT_NPROC" in self.cfg["rlimits"]
        if not limited:
            self.cfg["rlimits"].pop("RLIMIT_NPROC", None)  # would count the caller's own processes
        self.send(props=self.props)
        if self.props["pid_namespace"]:
            init = os.fork()
            if init == 0:
                try:
                    self.run_init()
                finally:
                    os._exit(0)
            self.child = init
            while True:
                try:
                    os.waitpid(init, 0)
                    break
                except InterruptedError:
                    continue
        else:
            self.wait_program(self.spawn_program())
            if self.uid is not None:
                _kill_uid(self.uid)
        # With a pid namespace there is nothing to sweep: init's exit has already killed and
        # reaped everything in it (and this process could not fork any more: its namespace is gone).


def _die_with_parent():
    """prctl(PR_SET_PDEATHSIG, SIGKILL): the kernel kills us when our parent (thread) exits."""
    _libc_call("prctl", ctypes.c_int(1), ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
               ctypes.c_ulong(0), ctypes.c_ulong(0))  # fmt: skip


def _kill_uid(uid):
    """Kills every process of `uid` (never 0): a forked helper takes that uid and kill(-1)s."""
    if not uid:
        raise ValueError("refusing to kill the processes of uid 0")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(1000):  # repeat: a fork bomb may fork between two sweeps
                try:
                    os.kill(-1, signal.SIGKILL)  # every process this uid may signal, but itself
                except ProcessLookupError:
                    code = 0
                    break
                os.sched_yield()
        finally:
            os._exit(code)
    os.waitpid(pid, 0)


def _launcher_entry(argv):
    if argv[1] == "--kill-uid":
        _kill_uid(int(argv[2]))
        return 0
    cfg = marshal.loads(bytes.fromhex(argv[2]))  # marshal: no json (and re, enum) to import
    launcher = _Launcher(cfg)
    try:
        launcher.main()
    except BaseException as e:  # noqa: B036 - report anything, the parent decides
        launcher.send(error=f"sandbox launcher failed: {e!r}")
        return 1
    return 0


if __name__ == "__main__":
    # As a script: `sandbox.py --launch CONFIG`. From the cached code object (see
    # `_launcher_command`): `-c BOOT CODE_FILE --launch CONFIG`.
    _argv = sys.argv if sys.argv[1:2] in (["--launch"], ["--kill-uid"]) else sys.argv[1:]
    if len(_argv) == 3 and _argv[1] in ("--launch", "--kill-uid"):
        sys.exit(_launcher_entry(_argv))


# ---------------------------------------------------------------------------------------------
# Part 2: the API, used in the trainer's process. (`_launcher_command` compiles what is above.)
# ---------------------------------------------------------------------------------------------

import ast  # noqa: E402
import concurrent.futures  # noqa: E402
import dataclasses  # noqa: E402
import fcntl  # noqa: E402
import hashlib  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402,F811 - the full module (Signals) for the API side
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402

log = logging.getLogger(__name__)

STATUSES = ("passed", "failed", "timeout", "error")

#: First uid of the pool of sandbox uids (used when the trainer runs as root). Far above any uid a
#: distribution hands out (and above the usual /etc/subuid ranges); override with
#: BON_JAX_SANDBOX_UID_BASE. Nothing is owned by these uids outside the runs' work directories.
UID_BASE = int(os.environ.get("BON_JAX_SANDBOX_UID_BASE", 2_000_000_000))
UID_POOL_SIZE = 4096

_LAUNCHER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
_PROGRAM_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
}
_SETUP_TIMEOUT_S = 30.0  # the launcher's own setup; far more than it ever takes (tens of ms)
_DRAIN_S = 0.5  # after the program ended: how long to wait for the last bytes of output
_TERM_GRACE_S = 2.0  # on timeout: how long the launcher has to kill and reap the program


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of one program.

    memory_bytes: RLIMIT_AS (address space). cpu_s: RLIMIT_CPU, None = ceil(timeout_s) + 1.
    max_processes: RLIMIT_NPROC (processes + threads of the sandbox uid). file_size_bytes:
    RLIMIT_FSIZE. open_files: RLIMIT_NOFILE. tmpfs_bytes: size of each private tmpfs (/tmp, ...).
    output_bytes: stdout and stderr are each truncated to this many bytes.
    """

    memory_bytes: int = 1 << 30
    cpu_s: float | None = None
    max_processes: int = 32
    file_size_bytes: int = 16 << 20
    open_files: int = 128
    tmpfs_bytes: int = 16 << 20
    output_bytes: int = 64 << 10


@dataclasses.dataclass(frozen=True)
class Enforced:
    """The containment a run actually got (see the module docstring for what each one means)."""

    network_isolated: bool = False
    pid_namespace: bool = False
    mount_namespace: bool = False
    readonly_root: bool = False
    private_proc: bool = False
    ipc_namespace: bool = False
    user_namespace: bool = False
    uid_dropped: bool = False
    uid: int | None = None
    nproc_limited: bool = False
    rlimits: Mapping[str, int] = dataclasses.field(default_factory=dict)
    python: str = ""
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What happened to one program.

    status: 'passed' (exit code 0), 'failed' (non-zero exit, or killed by a signal other than
    the CPU limit's), 'timeout' (wall clock or CPU limit), 'error' (the sandbox itself failed; the
    program may not have run: see `error`).
    exit_code / signal: of the program (None where it does not apply). stdout / stderr: decoded
    (UTF-8, replacement characters), at most `Limits.output_bytes` bytes each.
    wall_s: from the call until the program's end was seen (the clean-up after it excluded).
    pid: the launcher's pid, which is also the process group id of the run. cpu_s / max_rss_kb:
    the program's CPU time and peak resident memory (None when it did not end normally).
    """

    status: str
    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    wall_s: float
    enforced: Enforced
    pid: int | None = None
    cpu_s: float | None = None
    max_rss_kb: int | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(msg: str) -> None:
    with _warned_lock:
        if msg in _warned:
            return
        _warned.add(msg)
    log.warning("sandbox: %s", msg)


def default_python() -> str:
    """The interpreter programs run on: the trainer's base interpreter (outside any venv)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _python_prefix(python: str) -> str:
    real = os.path.realpath(python)
    if real == default_python():
        return os.path.realpath(sys.base_prefix)
    return os.path.dirname(os.path.dirname(real))  # <prefix>/bin/pythonX.Y


_private_dir_path: str | None = None
_private_dir_lock = threading.Lock()


def _private_dir() -> str:
    """A directory only our user can use (uid lock files, the launcher's compiled code)."""
    global _private_dir_path
    with _private_dir_lock:
        if _private_dir_path is None:
            d = os.path.join(tempfile.gettempdir(), f"bon_jax_sandbox.{os.geteuid()}")
            os.makedirs(d, mode=0o700, exist_ok=True)
            st = os.lstat(d)
            if os.path.islink(d) or not os.path.isdir(d) or st.st_uid != os.geteuid():
                raise RuntimeError(f"sandbox directory {d} is not ours")
            if st.st_mode & 0o077:
                os.chmod(d, 0o700)
            _private_dir_path = d
        return _private_dir_path


_BOOT = "import marshal,sys;exec(marshal.loads(open(sys.argv[1],'rb').read()))"
_launcher_code: tuple[str, bytes] | None = None  # (file name, marshalled code of Part 1)
_launcher_code_lock = threading.Lock()


def _launcher_command(*args: str) -> list[str]:
    """The command that runs the launcher (Part 1 of this file) with `args`.

    Part 1 is compiled once per process and cached in our private directory as a marshalled code
    object: running this file as a script would recompile all of it on every run (a script gets no
    .pyc), ~50 ms each. The file is re-written if something (tmp cleaners) removed it.
    """
    global _launcher_code
    d = _private_dir()
    with _launcher_code_lock:
        if _launcher_code is None:
            with open(__file__, encoding="utf-8") as f:
                source = f.read()
            part1 = source[: source.index("# Part 2: the API")]
            data = marshal.dumps(compile(part1, __file__, "exec", dont_inherit=True))
            digest = hashlib.sha256(data).hexdigest()[:16]
            _launcher_code = (f"launcher-{sys.implementation.cache_tag}-{digest}.bin", data)
        name, data = _launcher_code
        path = os.path.join(d, name)
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
    return [sys.executable, "-I", "-S", "-c", _BOOT, path, *args]


class _UidPool:
    """Hands out sandbox uids; an flock on <lockdir>/<uid>.lock keeps them unique across processes."""

    def __init__(self, base: int, size: int):
        self.base, self.size = base, size
        self._counter = itertools.count()

    def acquire(self) -> tuple[int, int]:
        d = _private_dir()
        start = (os.getpid() * 7919 + next(self._counter)) % self.size
        for k in range(self.size):
            uid = self.base + (start + k) % self.size
            fd = os.open(os.path.join(d, f"{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return uid, fd
        raise RuntimeError(f"all {self.size} sandbox uids are in use")

    @staticmethod
    def release(fd: int) -> None:
        os.close(fd)  # drops the flock


_uid_pool = _UidPool(UID_BASE, UID_POOL_SIZE)


def _rlimits(limits: Limits, timeout_s: float) -> dict[str, object]:
    cpu = limits.cpu_s if limits.cpu_s is not None else math.ceil(timeout_s) + 1
    cpu = max(1, math.ceil(cpu))
    return {
        "RLIMIT_CORE": 0,
        "RLIMIT_CPU": [cpu, cpu + 1],  # SIGXCPU at the soft limit, SIGKILL one second later
        "RLIMIT_AS": int(limits.memory_bytes),
        "RLIMIT_NPROC": int(limits.max_processes),
        "RLIMIT_FSIZE": int(limits.file_size_bytes),
        "RLIMIT_NOFILE": int(limits.open_files),
    }


def _python_args(python: str) -> list[str]:
    same = os.path.realpath(python) == default_python()  # -P exists from 3.11 on
    return ["-S", "-B"] + (["-P"] if same and sys.version_info >= (3, 11) else [])


class _Capped:
    def __init__(self, cap: int):
        self.cap, self.buf, self.truncated = cap, bytearray(), False

    def add(self, data: bytes) -> None:
        room = self.cap - len(self.buf)
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        self.buf += data

    def text(self) -> str:
        return self.buf.decode("utf-8", errors="replace")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _rmtree(path: str) -> None:
    def onerror(func, p, exc_info):  # a program may have chmod'ed its files; we own the tree
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)
    if os.path.exists(path):  # pragma: no cover - leaves a trace rather than failing the run
        _warn_once(f"could not remove the work directory {path}")


def run(
    program: str,
    *,
    timeout_s: float = 10.0,
    limits: Limits | None = None,
    python: str | None = None,
    work_root: str | None = None,
    files: Mapping[str, str] | None = None,
    drop_uid: bool = True,
    namespaces: bool = True,
) -> RunResult:
    """Runs one Python program (source text) in the sandbox and returns what happened.

    timeout_s: wall-clock limit. limits: resource limits (defaults of `Limits`). python: the
    interpreter (default `default_python()`). work_root: where the temporary work directories are
    made (default: the system's temp dir). files: extra files {relative name: text} written next to
    the program. drop_uid: as root, run the program as a pool uid; namespaces: create the pid,
    network, mount and ipc namespaces. Turn either off only to debug or to test the degraded path.
    Never raises because of what the program does.
    """
    limits = limits or Limits()
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    python = python or default_python()
    t0 = time.monotonic()
    lease = _uid_pool.acquire() if (drop_uid and os.geteuid() == 0) else None
    uid = lease[0] if lease else None
    workdir = proc = result = None
    fds: list[int] = []
    try:
        workdir = tempfile.mkdtemp(prefix="bon_jax_sbx_", dir=work_root)
        _write_program(workdir, program, files or {}, uid)
        report_r, report_w = os.pipe()
        fds += [report_r, report_w]
        cfg = {
            "report_fd": report_w,
            "uid": uid,
            "workdir": workdir,
            "program": "program.py",
            "python": python,
            "python_prefix": _python_prefix(python),
            "python_args": _python_args(python),
            "env": _PROGRAM_ENV,
            "rlimits": _rlimits(limits, timeout_s),
            "tmpfs_bytes": int(limits.tmpfs_bytes),
            "parent_pid": os.getpid(),
            "backstop_s": math.ceil(_SETUP_TIMEOUT_S + timeout_s + 2 * _TERM_GRACE_S),
            "namespaces": bool(namespaces),
        }
        proc = subprocess.Popen(
            _launcher_command("--launch", marshal.dumps(cfg).hex()),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_LAUNCHER_ENV,
            cwd="/",
            start_new_session=True,
            pass_fds=(report_w,),
        )
        os.close(report_w)
        fds.remove(report_w)
        result = _supervise(proc, report_r, timeout_s, limits, cfg["rlimits"], t0)
        return result
    finally:
        if proc is not None:
            _kill_group(proc.pid)
            proc.wait()
            for f in (proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
        for fd in fds:
            os.close(fd)
        # A launcher that returned normally from a pid namespace leaves nothing behind (init's exit
        # waits for the namespace to empty). Anything else (timeout, no pid namespace, a launcher
        # killed by the program) gets its group and its uid's processes hunted down first.
        ended_clean = proc is not None and proc.returncode == 0
        if not (ended_clean and result is not None and result.enforced.pid_namespace):
            if proc is not None:
                _wait_group_gone(proc.pid)
            if uid is not None:
                _reap_uid(uid)
        if workdir is not None:
            _rmtree(workdir)
        if lease:
            _uid_pool.release(lease[1])


def _write_program(workdir: str, program: str, files: Mapping[str, str], uid: int | None) -> None:
    entries = {"program.py": program, **files}
    for name, text in entries.items():
        path = os.path.normpath(os.path.join(workdir, name))
        if not path.startswith(workdir + os.sep):
            raise ValueError(f"file name {name!r} escapes the work directory")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # surrogatepass: a lone surrogate in generated text becomes bytes Python then refuses
        # (a SyntaxError in the sandbox, i.e. a failed program) instead of an error here.
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)
    if uid is not None:
        for dirpath, _dirnames, filenames in os.walk(workdir):
            os.chown(dirpath, uid, uid)
            for n in filenames:
                os.chown(os.path.join(dirpath, n), uid, uid)
    os.chmod(workdir, 0o700)


def _reap_uid(uid: int, wait_s: float = 5.0) -> None:
    """Waits until no process of `uid` is left, killing them (as that uid) if they linger."""
    t_end = time.monotonic() + wait_s
    t_kill = time.monotonic() + 0.05  # dying processes (a pid namespace being emptied) go alone
    killed = False
    while processes_of_uid(uid):
        now = time.monotonic()
        if now >= t_end:
            _warn_once(f"processes of sandbox uid {uid} survived the clean-up")
            return
        if now >= t_kill and not killed:
            subprocess.run(
                _launcher_command("--kill-uid", str(uid)),
                stdin=subprocess.DEVNULL,
                env=_LAUNCHER_ENV,
                cwd="/",
                check=False,
                timeout=30,
            )
            killed = True
        time.sleep(0.01)


def _wait_group_gone(pgid: int, wait_s: float = 5.0) -> None:
    t_end = time.monotonic() + wait_s
    while _group_members(pgid):
        if time.monotonic() >= t_end:
            _warn_once(f"processes of group {pgid} survived the clean-up")
            return
        _kill_group(pgid)
        time.sleep(0.01)


def _group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` (from /proc/<pid>/stat)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(b")", 1)[1].split()[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def processes_of_uid(uid: int) -> list[int]:
    """Pids whose real, effective or saved uid is `uid` (from /proc/<pid>/status)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        if uid in map(int, line.split()[1:4]):
                            pids.append(int(entry.name))
                        break
        except OSError:  # the process ended meanwhile
            continue
    return pids


def _supervise(proc, report_r, timeout_s, limits, rlimits, t0) -> RunResult:
    out, err = _Capped(limits.output_bytes), _Capped(limits.output_bytes)
    report = bytearray()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout.fileno(), selectors.EVENT_READ, out)
    sel.register(proc.stderr.fileno(), selectors.EVENT_READ, err)
    sel.register(report_r, selectors.EVENT_READ, report)
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # old kernel or Python: poll instead
        pidfd = None
    else:
        sel.register(pidfd, selectors.EVENT_READ, "exit")

    def exited() -> bool:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return info is not None

    deadline = t0 + _SETUP_TIMEOUT_S
    started = timed_out = setup_hung = done = False
    term_at = drain_until = None
    try:
        while True:
            now = time.monotonic()
            if drain_until is not None:  # the launcher has ended (or was killed): last bytes
                if now >= drain_until or not sel.get_map():
                    break
                limit = drain_until
            elif term_at is not None:  # asked the launcher to kill the program: wait, then force
                if now >= term_at + _TERM_GRACE_S:
                    _kill_group(proc.pid)
                    drain_until = now + _DRAIN_S
                    continue
                limit = term_at + _TERM_GRACE_S
            elif now >= deadline:
                if started:
                    timed_out, term_at = True, now
                    try:
                        os.kill(proc.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                else:
                    setup_hung, drain_until = True, now + _DRAIN_S
                    _kill_group(proc.pid)
                continue
            else:
                limit = deadline
            wait = max(0.0, limit - now)
            if pidfd is None:
                wait = min(wait, 0.01)
            events = sel.select(wait) if sel.get_map() else time.sleep(wait) or []
            for key, _ in events:
                if key.data == "exit":
                    sel.unregister(key.fd)
                    done = True
                    continue
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                elif key.data is report:
                    report += data
                    if not started and b"{'props':" in report:
                        started = True
                        deadline = time.monotonic() + timeout_s
                else:
                    key.data.add(data)
            if pidfd is None and not done and exited():
                done = True
            if done and drain_until is None:
                _kill_group(proc.pid)  # leftovers of the group, before the launcher is reaped
                drain_until = time.monotonic() + _DRAIN_S
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)

    props: dict = {}
    warnings: list[str] = []
    exits: list[dict] = []
    errors: list[str] = []
    for line in report.decode("utf-8", errors="replace").splitlines():
        try:
            msg = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            continue
        if "props" in msg:
            warnings += msg["props"].pop("warnings", [])
            props.update(msg["props"])
        if "exit_code" in msg:
            exits.append(msg)
        if "error" in msg:
            errors.append(msg["error"])
    for w in warnings:
        _warn_once(w)
    applied = {k: (v[0] if isinstance(v, list) else v) for k, v in rlimits.items()}
    if not props.get("nproc_limited"):
        applied.pop("RLIMIT_NPROC", None)
    fields = {f.name for f in dataclasses.fields(Enforced)}
    enforced = Enforced(
        **{k: v for k, v in props.items() if k in fields and k != "rlimits"},
        rlimits=applied,
        warnings=tuple(warnings),
    )
    # One exit report comes from the launcher side; more means the program reached the report
    # pipe (only conceivable where it shares our uid) and nothing in it can be trusted.
    exit_info = exits[0] if len(exits) == 1 else {}
    code, sig = exit_info.get("exit_code"), exit_info.get("signal")
    error = None
    if len(exits) > 1:
        status, error = "failed", "the program wrote into the sandbox's report pipe"
    elif timed_out:
        status = "timeout"
    elif setup_hung:
        status, error = "error", f"the sandbox did not start within {_SETUP_TIMEOUT_S:.0f} s"
    elif errors:
        status, error = "error", "; ".join(errors)
    elif not exit_info:
        # The launcher died before reporting (only possible where the program could reach it).
        status, error = "failed", f"sandbox launcher ended abnormally ({proc.poll()})"
    elif code == 0:
        status = "passed"
    elif sig == signal.SIGXCPU or (sig == signal.SIGKILL and _cpu_exhausted(exit_info, rlimits)):
        status = "timeout"
    else:
        status = "failed"
    if error and status == "error" and err.buf:
        error += f"\n{err.text()[-2000:]}"
    return RunResult(
        status=status,
        exit_code=code,
        signal=sig,
        stdout=out.text(),
        stderr=err.text(),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        wall_s=time.monotonic() - t0,
        enforced=enforced,
        pid=proc.pid,
        cpu_s=exit_info.get("cpu_s"),
        max_rss_kb=exit_info.get("max_rss_kb"),
        error=error,
    )


def _cpu_exhausted(exit_info: Mapping, rlimits: Mapping) -> bool:
    cpu = exit_info.get("cpu_s")
    return cpu is not None and cpu >= rlimits["RLIMIT_CPU"][0] - 0.05


def run_many(
    programs: Sequence[str],
    *,
    timeout_s: float,
    max_workers: int | None = None,
    limits: Limits | None = None,
    python: str | None = None,
    work_root: str | None = None,
    drop_uid: bool = True,
    namespaces: bool = True,
    files: Sequence[Mapping[str, str] | None] | None = None,
) -> list[RunResult]:
    """Runs every program (see `run`), `max_workers` at a time (default os.cpu_count()).

    Threads only drive the children (the work is in the sandboxed processes). Results come back in
    the order of `programs`. files: one `run(files=...)` mapping (or None) per program.
    """
    programs = list(programs)
    if not programs:
        return []
    files = [None] * len(programs) if files is None else list(files)
    if len(files) != len(programs):
        raise ValueError(f"run_many: {len(programs)} programs but {len(files)} entries in files")
    workers = max(1, min(max_workers or os.cpu_count() or 1, len(programs)))
    kw = dict(timeout_s=timeout_s, limits=limits, python=python, work_root=work_root)
    kw.update(drop_uid=drop_uid, namespaces=namespaces)
    if workers == 1:
        return [run(p, files=f, **kw) for p, f in zip(programs, files)]
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda p, f: run(p, files=f, **kw), programs, files))


def failure_reason(result: RunResult, max_chars: int = 300) -> str | None:
    """A one-line reason for a result that did not pass (None if it passed).

    'timeout', 'sandbox error: ...', or for a failure the exception line of the traceback; a bare
    AssertionError comes with the failing assert's source line ("AssertionError: assert f(1) == 2").
    """
    if result.status == "passed":
        return None
    if result.status == "timeout":
        return "timeout"
    if result.status == "error":
        first = (result.error or "unknown").splitlines()[0]
        return f"sandbox error: {first}"[:max_chars]
    if result.signal is not None:
        try:
            return f"killed by {signal.Signals(result.signal).name}"
        except ValueError:
            return f"killed by signal {result.signal}"
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    lines = [ln for ln in lines if set(ln.strip()) - set("^~")]  # 3.11 caret markers
    for i in range(len(lines) - 1, -1, -1):
        if not lines[i].startswith((" ", "\t")) and not lines[i].startswith("Traceback"):
            reason = lines[i].strip()
            if reason == "AssertionError" and i > 0 and lines[i - 1].startswith(" "):
                reason = f"AssertionError: {lines[i - 1].strip()}"
            return reason[:max_chars]
    if result.exit_code is None:
        return (result.error or "no exit status")[:max_chars]
    return f"exit code {result.exit_code}"


__all__ = [
    "STATUSES",
    "Enforced",
    "Limits",
    "RunResult",
    "default_python",
    "failure_reason",
    "run",
    "run_many",
]
