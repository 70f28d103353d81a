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
  mount         unshare(CLONE_NEWNS), then pivot_root into a private root: a small read-only tmpfs
                holding read-only binds of /usr, /bin, /sbin, /lib* (as the host has them), the
                interpreter's prefix (a pyenv in /root: only that prefix), six files of /etc
                (ld.so.cache, localtime, passwd, group, nsswitch.conf, hosts) and /dev/{null, zero,
                full, random, urandom}; /proc is the new pid namespace's own. Nothing else of the
                host is there: not the project, its runs/, /home, /root, /srv, /sys, the host's /tmp
                (`private_root`). A program can read only what a stock system image holds.
  disk quota    everything the program may write (its work directory, copied in at /tmp/sandbox,
                and /tmp, /var/tmp, /dev/shm, /run/lock) is on one tmpfs of `Limits.disk_bytes`
                bytes and `Limits.disk_inodes` inodes: past them a write fails with ENOSPC; nothing
                it writes reaches a disk (its pages are memory, bounded by the quota: one program per
                core costs at most cores x disk_bytes). `disk_quota='tmpfs'`.
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

Files: the trainer writes each program into a work directory
`<tmp>/bon_jax_sbx_<pid namespace>-<pid>-<start time>_*` (or under `work_root`), which names the
process that made it. It is removed after each run, timeouts included; at the trainer's normal exit
(atexit) for runs still in progress; and if the trainer was killed (SIGKILL, an unhandled SIGTERM)
by the next run under the same root, which removes every such directory whose owner process is
gone (checked at most once a minute per root). Its runs die with it (PR_SET_PDEATHSIG, the pid
namespace), and their tmpfs with their mount namespace. `<tmp>/bon_jax_sandbox.<euid>/` (0700)
keeps the uid lock files and the launcher's compiled code between runs.

Degrading: without root, the launcher first creates a user namespace (unprivileged user namespaces)
and gets the same namespaces inside it, but the program keeps the caller's uid (RLIMIT_NPROC then
counts per user namespace on Linux >= 5.14). Where the kernel refuses a namespace (containers without
CAP_SYS_ADMIN, seccomp), the run goes on without it, a warning is logged once, and `Enforced` says so
(`network_isolated=False`, ...). Without a pid namespace, leftovers are still killed by process group
and, when the uid was dropped, by uid. Without a mount namespace, the uid is only dropped if it can
reach an interpreter (the trainer's, else /usr/bin/python3 or /usr/local/bin/python3, with a
warning), otherwise it runs as root with the rest of the containment; world-writable directories
(/tmp) stay writable to the program. Without a private root (no mount namespace, or its set-up
failed: the half-built root is detached and the run goes on with the host's view) a warning says
that the program can read whatever its uid can, and the disk quota becomes a watchdog
(`disk_quota='watchdog'`): the supervisor measures the work directory every 20 ms and kills the
run's process group once it holds more than the quota (status 'failed', `error` says so). That is
best effort: a fast writer overshoots by what it writes in 20 ms, and writes elsewhere (/tmp) are
bounded only by RLIMIT_FSIZE per file. Not used as a fallback: Landlock (it would restrict reads
without a mount namespace, but needs its own ABI handling).
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

_SANDBOX_DIR = "/tmp/sandbox"  # where the work directory appears inside a mount namespace
_MNT_DETACH = 2
# pivot_root has no libc wrapper: its syscall number, per architecture.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41, "ppc64le": 203,
                   "ppc64": 203, "s390x": 217, "i686": 217, "armv7l": 218}  # fmt: skip
# What the program sees of the host, read-only (when they exist): system programs and libraries,
# the interpreter's prefix, and these few files of /etc (the dynamic loader's cache, user and time
# zone look-ups). Nothing else: not the project, not its runs/, not /home, /root, /srv, /opt, ...
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("ld.so.cache", "localtime", "passwd", "group", "nsswitch.conf", "hosts")
_DEV_NODES = ("null", "zero", "full", "random", "urandom")
# Writable for the program: all of them (and its work directory, /tmp/sandbox) on one tmpfs.
_WRITABLE_DIRS = (("/tmp", "tmp"), ("/var/tmp", "var_tmp"), ("/dev/shm", "shm"), ("/run/lock", "lock"))
_SKELETON_BYTES = 1 << 20  # the new root's own tmpfs: only directories, mount points and links

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


def _copy_tree(src_fd, dst, uid, gid):
    """Copies the regular files and directories under the directory `src_fd` into `dst`."""
    for dirpath, _dirnames, filenames, dfd in os.fwalk(".", dir_fd=src_fd):
        target = os.path.normpath(os.path.join(dst, dirpath))
        if dirpath != ".":
            os.mkdir(target, 0o700)
            os.chown(target, uid, gid)
        for name in filenames:
            fin = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
            try:
                fout = os.open(os.path.join(target, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    while True:
                        chunk = os.read(fin, 1 << 20)
                        if not chunk:
                            break
                        while chunk:
                            chunk = chunk[os.write(fout, chunk) :]
                    os.fchown(fout, uid, gid)
                finally:
                    os.close(fout)
            finally:
                os.close(fin)


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
            "private_root": False,
            "disk_quota": "",
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
            except Exception as e:  # noqa: BLE001 - any failure: the host's view, as without one
                self.props["mount_namespace"] = False
                self.warn(f"mount namespace setup failed ({e!r})")

    def setup_mounts(self):
        """Builds the program's root (in our private mount namespace) and pivots into it.

        The new root is a small tmpfs, read-only once built, holding read-only binds of what the
        program may read (`_SYSTEM_DIRS`, the interpreter's prefix, `_ETC_FILES`, a few /dev
        nodes) and nothing else of the host. Everything the program may write (`_WRITABLE_DIRS`,
        its work directory at /tmp/sandbox) is on a second tmpfs whose size and inode count are
        the program's disk quota: past them a write fails with ENOSPC, and nothing it writes
        reaches a disk. The files the trainer wrote into the host work directory are copied in.
        On failure before the pivot, the half-built root is detached and the host's view is left
        as it was (the caller then runs the program without a mount namespace).
        """
        uid = self.uid if self.root else os.getuid()
        gid = self.uid if self.root else os.getgid()
        pivot_nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
        if pivot_nr is None:
            raise OSError(0, f"pivot_root: unknown syscall number on {os.uname().machine}")
        os.umask(0o022)
        _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
        # The new root is built where nothing of interest is hidden meanwhile (only from us).
        stage = next((d for d in ("/tmp", "/mnt") if os.path.isdir(d) and not os.path.islink(d)), None)
        if stage is None:
            raise OSError(0, "no /tmp or /mnt to build the sandbox root on")
        # Open what must stay reachable before anything is mounted over it.
        work_fd = os.open(self.cfg["workdir"], os.O_RDONLY | os.O_DIRECTORY)
        prefix = self.cfg["python_prefix"]
        prefix_fd = None
        if os.path.isdir(prefix):  # (a missing interpreter fails at exec, with a clear error)
            prefix_fd = os.open(prefix, os.O_PATH | os.O_DIRECTORY)
        try:
            _mount("tmpfs", stage, "tmpfs", _MS_NOSUID | _MS_NODEV,
                   f"size={_SKELETON_BYTES},nr_inodes=1024,mode=0755")  # fmt: skip
            try:
                self._build_root(stage, work_fd, prefix, prefix_fd, uid, gid)
                os.chdir(stage)
                _libc_call("syscall", ctypes.c_long(pivot_nr), b".", b".")  # pivot_root
            except BaseException:
                os.chdir("/")
                _libc_call("umount2", os.fsencode(stage), ctypes.c_int(_MNT_DETACH))
                raise
        finally:
            os.close(work_fd)
            if prefix_fd is not None:
                os.close(prefix_fd)
        # The old root now sits on top of the new one: detach it (with everything under it).
        _libc_call("umount2", b".", ctypes.c_int(_MNT_DETACH))
        os.chdir("/")
        self.workdir_inside = _SANDBOX_DIR
        self.props.update(readonly_root=True, private_root=True, disk_quota="tmpfs")

    def _build_root(self, root, work_fd, prefix, prefix_fd, uid, gid):
        at = lambda p: root + p  # noqa: E731 - host path p -> its place in the new root

        def bind_ro(src, dst):
            _mount(src, dst, None, _MS_BIND | _MS_REC)
            _mount(None, dst, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _kept_flags(dst))

        for d in _SYSTEM_DIRS:
            if os.path.islink(d):
                os.symlink(os.readlink(d), at(d))
            elif os.path.isdir(d):
                os.mkdir(at(d))
                bind_ro(d, at(d))
        os.mkdir(at("/etc"))
        for name in _ETC_FILES:
            if os.path.isfile(f"/etc/{name}"):
                os.close(os.open(at(f"/etc/{name}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                bind_ro(os.path.realpath(f"/etc/{name}"), at(f"/etc/{name}"))
        real_prefix = os.path.realpath(prefix)
        covered = any(real_prefix == os.path.realpath(d) or
                      real_prefix.startswith(os.path.realpath(d) + "/") for d in _SYSTEM_DIRS)  # fmt: skip
        if prefix_fd is not None and not covered and real_prefix != "/":
            os.makedirs(at(prefix))  # 0755 (umask 022): traversable by the sandbox uid
            bind_ro(f"/proc/self/fd/{prefix_fd}", at(prefix))
        os.mkdir(at("/dev"))
        for name in _DEV_NODES:
            if os.path.exists(f"/dev/{name}"):
                os.close(os.open(at(f"/dev/{name}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                _mount(f"/dev/{name}", at(f"/dev/{name}"), None, _MS_BIND)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
            os.symlink(target, at(f"/dev/{name}"))
        for d, _ in _WRITABLE_DIRS:
            os.makedirs(at(d), exist_ok=True)
        os.mkdir(at("/proc"))
        # The program's writable space: one tmpfs, staged on /proc (empty until the end) and bound
        # at each writable directory; the binds keep it alive after the stage is detached.
        w = at("/proc")
        q_bytes, q_inodes = int(self.cfg["disk_bytes"]), int(self.cfg["disk_inodes"])
        _mount("tmpfs", w, "tmpfs", _MS_NOSUID | _MS_NODEV,
               f"size={q_bytes},nr_inodes={q_inodes},mode=0755")  # fmt: skip
        for _, sub in _WRITABLE_DIRS:
            os.mkdir(f"{w}/{sub}")
            os.chmod(f"{w}/{sub}", 0o1777)
        sbx = w + "/tmp/" + os.path.basename(_SANDBOX_DIR)
        os.mkdir(sbx, 0o700)
        os.chown(sbx, uid, gid)
        _copy_tree(work_fd, sbx, uid, gid)
        for d, sub in _WRITABLE_DIRS:
            _mount(f"{w}/{sub}", at(d), None, _MS_BIND)
        _libc_call("umount2", os.fsencode(w), ctypes.c_int(_MNT_DETACH))
        if not self.root:
            # In a user namespace the kernel lets init mount a fresh /proc only where one is
            # already fully visible: the host's, which the new one then covers.
            _mount("/proc", w, None, _MS_BIND | _MS_REC)
        _mount(None, root, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _kept_flags(root))

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
        if not self.props["private_root"]:
            self.warn(
                "no private root: the program can read every file its uid can read, and only its "
                "work directory's size is watched (by polling)"
            )
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
import atexit  # noqa: E402
import concurrent.futures  # noqa: E402
import dataclasses  # noqa: E402
import fcntl  # noqa: E402
import hashlib  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402,F811 - the full module (Signals) for the API side
import stat  # noqa: E402
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
    RLIMIT_FSIZE (one file). open_files: RLIMIT_NOFILE. disk_bytes / disk_inodes: the program's
    total disk quota, over its work directory, /tmp, /var/tmp, /dev/shm and /run/lock together
    (the size and inode count of the one tmpfs they are on; a few inodes go to those directories
    and the program's own files). output_bytes: stdout and stderr are each truncated to this many
    bytes.
    """

    memory_bytes: int = 1 << 30
    cpu_s: float | None = None
    max_processes: int = 32
    file_size_bytes: int = 16 << 20
    open_files: int = 128
    disk_bytes: int = 32 << 20
    disk_inodes: int = 4096
    output_bytes: int = 64 << 10


@dataclasses.dataclass(frozen=True)
class Enforced:
    """The containment a run actually got (see the module docstring for what each one means)."""

    network_isolated: bool = False
    pid_namespace: bool = False
    mount_namespace: bool = False
    readonly_root: bool = False
    private_root: bool = False
    disk_quota: str = ""
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


_WORKDIR_PREFIX = "bon_jax_sbx_"
# <prefix><pid namespace>-<owner pid>-<owner start time>_<random>: whose it is, to sweep it once
# its owner is dead (killed before its clean-up could run).
_WORKDIR_RE = re.compile(re.escape(_WORKDIR_PREFIX) + r"(\d+)-(\d+)-(\d+)_[^/]*")
_SWEEP_EVERY_S = 60.0
_swept_at: dict[str, float] = {}
_live_workdirs: dict[str, int] = {}  # work directories of runs in progress -> the owner pid
_workdirs_lock = threading.Lock()
_DISK_POLL_S = 0.02  # the watchdog's period, where there is no tmpfs quota


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot): with the pid, names one process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _pid_namespace_id() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def _owner_tag() -> str:
    pid = os.getpid()
    return f"{_pid_namespace_id()}-{pid}-{_start_time(pid)}"


def _sweep_stale_workdirs(root: str) -> None:
    """Removes work directories under `root` whose owner process is gone (at most once a minute).

    Only directories of this pid namespace (another one's pids mean nothing here) and owned by us
    or by a pool uid (as root) are touched.
    """
    now = time.monotonic()
    with _workdirs_lock:
        if now - _swept_at.get(root, -math.inf) < _SWEEP_EVERY_S:
            return
        _swept_at[root] = now
    ns, euid = _pid_namespace_id(), os.geteuid()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        m = _WORKDIR_RE.fullmatch(entry.name)
        if m is None or m[1] != ns or _start_time(int(m[2])) == m[3]:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        ours = st.st_uid == euid or (euid == 0 and UID_BASE <= st.st_uid < UID_BASE + UID_POOL_SIZE)
        if stat.S_ISDIR(st.st_mode) and ours:
            _rmtree(entry.path)


@atexit.register
def _remove_live_workdirs() -> None:
    """At interpreter exit, the work directories of runs still in progress (daemon threads)."""
    with _workdirs_lock:
        mine = [d for d, pid in _live_workdirs.items() if pid == os.getpid()]
    for d in mine:
        shutil.rmtree(d, ignore_errors=True)


def _disk_usage(path: str, max_bytes: int, max_inodes: int) -> tuple[int, int]:
    """Allocated bytes and inodes under `path`; stops counting once either is over its maximum."""
    total = inodes = 0
    stack = [path]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                inodes += 1
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                if total > max_bytes or inodes > max_inodes:
                    return total, inodes
    return total, inodes


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
    if limits.disk_bytes < 64 << 10 or limits.disk_inodes < 16:
        raise ValueError(
            f"Limits.disk_bytes must be >= 64 KiB and Limits.disk_inodes >= 16 (the program's own "
            f"files live there), got {limits.disk_bytes} and {limits.disk_inodes}"
        )
    python = python or default_python()
    t0 = time.monotonic()
    lease = _uid_pool.acquire() if (drop_uid and os.geteuid() == 0) else None
    uid = lease[0] if lease else None
    workdir = proc = result = None
    fds: list[int] = []
    try:
        root = os.path.abspath(work_root or tempfile.gettempdir())
        _sweep_stale_workdirs(root)
        workdir = tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{_owner_tag()}_", dir=root)
        with _workdirs_lock:
            _live_workdirs[workdir] = os.getpid()
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
            "disk_bytes": int(limits.disk_bytes),
            "disk_inodes": int(limits.disk_inodes),
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
        result = _supervise(proc, report_r, timeout_s, limits, cfg["rlimits"], t0, workdir)
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
            with _workdirs_lock:
                _live_workdirs.pop(workdir, None)
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


# CPython 3.11 keeps the AST constructor's recursion depth in interpreter-wide state: two threads
# parsing at once at different stack depths (a garbage collection during one parse runs finalisers,
# which lets another thread in) fail with "SystemError: AST constructor recursion depth mismatch"
# (python/cpython#106905). Runs are supervised from threads, so their report parses take turns.
_report_parse_lock = threading.Lock()


def _report_message(line: str | bytes) -> dict | None:
    """One line of the launcher's report as the dict literal it wrote, or None if it is not one."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    try:
        with _report_parse_lock:
            msg = ast.literal_eval(line)
    except (ValueError, SyntaxError):
        return None
    return msg if isinstance(msg, dict) else None


def _props_of(report: bytes) -> dict | None:
    """The launcher's first (complete) props report, once it has come."""
    for line in report.split(b"\n")[:-1]:
        if line.startswith(b"{'props':"):
            msg = _report_message(line)
            return msg.get("props", {}) if msg is not None else {}
    return None


def _supervise(proc, report_r, timeout_s, limits, rlimits, t0, workdir) -> RunResult:
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
    # Without a tmpfs quota (no private root), a watchdog measures the work directory instead.
    watch: bool | None = None
    next_poll = 0.0
    over_quota: tuple[int, int] | None = None
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
            if watch:
                wait = min(wait, max(0.0, next_poll - now))
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
            if started and watch is None:
                props = _props_of(bytes(report))
                if props is not None:
                    watch = props.get("disk_quota") != "tmpfs"
            if watch and not done and drain_until is None and time.monotonic() >= next_poll:
                used = _disk_usage(workdir, limits.disk_bytes, limits.disk_inodes)
                next_poll = time.monotonic() + _DISK_POLL_S
                if used[0] > limits.disk_bytes or used[1] > limits.disk_inodes:
                    over_quota = used
                    _kill_group(proc.pid)
                    drain_until = time.monotonic() + _DRAIN_S
                    continue
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
        msg = _report_message(line)
        if msg is None:
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
    if props and props.get("disk_quota") != "tmpfs":
        props["disk_quota"] = "watchdog"
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
    elif over_quota is not None:
        status = "failed"
        error = (
            f"disk quota exceeded: killed at {over_quota[0]} bytes / {over_quota[1]} inodes in its "
            f"work directory (limits {limits.disk_bytes} / {limits.disk_inodes})"
        )
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
    if result.error:  # a failure the sandbox diagnosed (disk quota, forged report)
        return result.error.splitlines()[0][:max_chars]
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
