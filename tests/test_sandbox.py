"""The sandbox: normal programs run and report; hostile ones are contained and the machine is intact.

Every run here goes through `_run`, which also checks that nothing of the run is left: no process of
its uid or its process group, no work directory. Containment tests that depend on a kernel feature
skip (with the reason) where the probe run says the feature was not available.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading

import jax.numpy as jnp
import pytest

from bon_jax import sandbox


@pytest.fixture(scope="module")
def probe() -> sandbox.Enforced:
    """What this machine enforces (one trivial run)."""
    r = sandbox.run("pass", timeout_s=30)
    assert r.status == "passed", r
    return r.enforced


@pytest.fixture
def work_root():
    d = tempfile.mkdtemp(prefix="bon_jax_test_sbx_")
    os.chmod(d, 0o711)  # traversable by the sandbox uid when there is no mount namespace
    yield d
    leftovers = os.listdir(d)
    shutil.rmtree(d)
    assert leftovers == [], f"work directories left behind: {leftovers}"


def _pgroup_members(pgid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:  # field 5: pgrp
                pids.append(int(name))
    return pids


def _run(program: str, work_root: str, **kw) -> sandbox.RunResult:
    r = sandbox.run(textwrap.dedent(program), work_root=work_root, **kw)
    if r.enforced.uid is not None:
        assert sandbox.processes_of_uid(r.enforced.uid) == [], "processes of the sandbox uid left"
    assert r.pid is not None and _pgroup_members(r.pid) == [], "processes of the group left"
    assert os.listdir(work_root) == [], "work directory left"
    return r


def test_normal_program_passes_with_captured_output(work_root):
    r = _run(
        """
        import os, sys
        print("hello", 6 * 7)
        print("to stderr", file=sys.stderr)
        print("cwd", os.getcwd() == os.environ["HOME"] == os.environ["TMPDIR"])
        """,
        work_root,
        timeout_s=30,
    )
    assert r.status == "passed" and r.passed, r
    assert r.exit_code == 0 and r.signal is None
    assert r.stdout == "hello 42\ncwd True\n"
    assert r.stderr == "to stderr\n"
    assert not r.stdout_truncated and not r.stderr_truncated
    assert r.wall_s > 0
    assert sandbox.failure_reason(r) is None


def test_failures_report_exit_code_and_reason(work_root):
    r = _run("import sys\nsys.exit(3)\n", work_root, timeout_s=30)
    assert (r.status, r.exit_code) == ("failed", 3)
    assert sandbox.failure_reason(r) == "exit code 3"
    r = _run("def f(x):\n    return x + 1\n\nassert f(1) == 3\n", work_root, timeout_s=30)
    assert r.status == "failed" and r.exit_code == 1
    assert sandbox.failure_reason(r) == "AssertionError: assert f(1) == 3"
    r = _run("undefined_name\n", work_root, timeout_s=30)
    assert sandbox.failure_reason(r) == "NameError: name 'undefined_name' is not defined"


def test_sandbox_error_when_the_interpreter_is_missing(work_root):
    r = _run("pass", work_root, timeout_s=30, python="/nonexistent/bin/python3")
    assert r.status == "error", r
    assert "could not start the program" in r.error
    assert sandbox.failure_reason(r).startswith("sandbox error")


def test_output_is_truncated(work_root):
    r = _run(
        "import sys\nsys.stdout.write('x' * 1_000_000)\n",
        work_root,
        timeout_s=30,
        limits=sandbox.Limits(output_bytes=1000),
    )
    assert r.status == "passed"
    assert r.stdout == "x" * 1000 and r.stdout_truncated


def test_hash_seed_is_fixed(work_root):
    prog = "print(hash('bon_jax'), list({'a', 'b', 'c', 'd', 'e'}))"
    a = _run(prog, work_root, timeout_s=30)
    b = _run(prog, work_root, timeout_s=30)
    assert a.status == b.status == "passed"
    assert a.stdout == b.stdout  # a random seed differs with probability ~1 - 2**-64


def test_environment_is_scrubbed(work_root, monkeypatch):
    secret = "bon-jax-test-secret-8c1f"
    monkeypatch.setenv("BON_JAX_TEST_SECRET", secret)
    r = _run(
        f"""
        import os
        print(sorted(os.environ.items()))
        for pid in ({os.getpid()}, os.getppid(), 1):
            try:
                print(open(f"/proc/{{pid}}/environ").read())
            except OSError as e:
                print("no", pid, type(e).__name__)
        """,
        work_root,
        timeout_s=30,
    )
    assert r.status == "passed", r
    assert secret not in r.stdout + r.stderr
    env = dict(eval(r.stdout.splitlines()[0]))
    assert env["PYTHONHASHSEED"] == "0" and env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert "BON_JAX_TEST_SECRET" not in env and "XLA_FLAGS" not in env


def test_infinite_loop_times_out(work_root):
    r = _run("while True:\n    pass\n", work_root, timeout_s=1.0)
    assert r.status == "timeout", r
    assert sandbox.failure_reason(r) == "timeout"
    r = _run("import time\ntime.sleep(600)\n", work_root, timeout_s=0.5)  # wall clock, not CPU
    assert r.status == "timeout", r


def test_cpu_limit_counts_as_timeout(work_root):
    r = _run("while True:\n    pass\n", work_root, timeout_s=20, limits=sandbox.Limits(cpu_s=1))
    assert r.status == "timeout", r
    assert r.signal is not None  # SIGXCPU (or SIGKILL at the hard limit)


def test_memory_bomb_is_contained(work_root):
    r = _run(
        """
        hog = []
        while True:
            hog.append(bytearray(16 << 20))
        """,
        work_root,
        timeout_s=30,
        limits=sandbox.Limits(memory_bytes=256 << 20),
    )
    assert r.status == "failed", r
    assert "MemoryError" in r.stderr
    assert r.enforced.rlimits["RLIMIT_AS"] == 256 << 20


def test_fork_bomb_is_contained(work_root, probe):
    if not (probe.nproc_limited or probe.pid_namespace):
        pytest.skip(f"no process-count containment here: {probe.warnings}")
    r = _run(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        work_root,
        timeout_s=2.0,
        limits=sandbox.Limits(max_processes=16),
    )
    assert r.status == "timeout", r
    # The machine still forks (our own user is not out of processes).
    assert subprocess.run(["true"]).returncode == 0


def test_daemonised_grandchildren_do_not_survive(work_root):
    r = _run(
        """
        import os, time
        for _ in range(3):
            if os.fork() == 0:
                os.setsid()           # leave the process group
                if os.fork() == 0:    # and the parent: a daemon
                    time.sleep(120)
                os._exit(0)
        print("parent done")
        """,
        work_root,
        timeout_s=30,
    )
    assert r.status == "passed" and r.stdout == "parent done\n", r
    # _run asserts that no process of the run's uid or group is left.


def test_large_file_write_is_refused(work_root):
    r = _run(
        """
        with open("big.bin", "wb") as f:
            for _ in range(64):
                f.write(b"\\0" * (1 << 20))
        """,
        work_root,
        timeout_s=30,
        limits=sandbox.Limits(file_size_bytes=1 << 20),
    )
    assert r.status == "failed", r
    assert "File too large" in r.stderr


DISK_FILLER = """
import gc
import os
written, files, errors = 0, 0, set()
for d in (".", "/tmp", "/var/tmp", "/dev/shm"):   # one quota over all of them
    for i in range(24):
        try:
            with open(os.path.join(d, f"fill{i}.bin"), "wb") as f:
                for _ in range(4):
                    f.write(b"x" * (256 << 10))
                    f.flush()
                    written += 256 << 10
        except OSError as e:
            errors.add(e.strerror)
            break
for i in range(20000):                             # and inodes: many empty files
    try:
        open(f"empty{i}", "w").close()
        files += 1
    except OSError as e:
        errors.add(e.strerror)
        break
st = os.statvfs(".")
print(written, files, st.f_blocks * st.f_frsize, sorted(errors))
"""


def test_disk_quota_bounds_everything_the_program_writes(work_root, probe):
    """One byte and inode quota over the work directory and every writable directory."""
    if not probe.private_root:
        pytest.skip(f"no private root (mount namespace): the quota is a watchdog here {probe.warnings}")
    quota, inodes = 8 << 20, 512
    r = _run(
        DISK_FILLER, work_root, timeout_s=30, limits=sandbox.Limits(disk_bytes=quota, disk_inodes=inodes)
    )
    assert r.status == "passed", r
    written, files, fs_size, errors = r.stdout.split(" ", 3)
    assert int(written) <= quota  # (of 4 x 24 MiB tried)
    assert int(files) < inodes  # (of 20000 tried)
    assert int(fs_size) <= quota  # the work directory is on the capped filesystem, not the disk
    assert "No space left on device" in errors
    assert r.enforced.disk_quota == "tmpfs" and r.enforced.readonly_root


def test_disk_quota_watchdog_without_a_mount_namespace(work_root):
    """Degraded (no private root): a watchdog measures the work directory and kills the program."""
    r = _run(
        """
        import time
        for i in range(400):
            with open(f"fill{i}.bin", "wb") as f:
                f.write(b"x" * (1 << 20))
            time.sleep(0.005)
        print("done")
        """,
        work_root,
        timeout_s=30,
        namespaces=False,
        limits=sandbox.Limits(disk_bytes=8 << 20),
    )
    assert r.enforced.disk_quota == "watchdog" and not r.enforced.private_root
    assert any("no private root" in w for w in r.enforced.warnings)
    assert r.status == "failed" and "done" not in r.stdout, r
    assert sandbox.failure_reason(r).startswith("disk quota exceeded"), r


def test_bad_disk_quota_is_refused():
    with pytest.raises(ValueError, match="disk_bytes"):
        sandbox.run("pass", timeout_s=5, limits=sandbox.Limits(disk_bytes=0))


def test_cannot_read_the_host_files(work_root, probe):
    """Only the system directories, the interpreter and a few /etc files are visible."""
    if not probe.private_root:
        pytest.skip(f"no private root (mount namespace) here: {probe.warnings}")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(sandbox.__file__)))
    scratch = os.path.join(repo, "tmp")  # git-ignored
    made_scratch = not os.path.exists(scratch)
    os.makedirs(scratch, exist_ok=True)
    secret_dir = tempfile.mkdtemp(prefix="sandbox_secret_", dir=scratch)
    os.chmod(secret_dir, 0o755)
    secret = os.path.join(secret_dir, "secret.txt")
    with open(secret, "w") as f:
        f.write("bon-jax-sandbox-secret")
    os.chmod(secret, 0o644)  # world-readable: only the mount view can hide it
    try:
        r = _run(
            f"""
            import os
            for path in ({secret!r}, {os.path.abspath(sandbox.__file__)!r}, {repo!r},
                         "/etc/hostname", "/home", "/sys/class"):
                try:
                    print("read", path, open(path).read(40) if os.path.isfile(path) else os.listdir(path))
                except OSError as e:
                    print("refused", path, type(e).__name__)
            print(sorted(os.listdir("/")))
            """,
            work_root,
            timeout_s=30,
        )
    finally:
        shutil.rmtree(secret_dir)
        if made_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    assert r.status == "passed", r
    lines = r.stdout.splitlines()
    assert "bon-jax-sandbox-secret" not in r.stdout
    assert all(line.startswith("refused") for line in lines[:-1]), r.stdout
    prefix_top = sandbox._python_prefix(r.enforced.python).split("/")[1]
    allowed = {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin", "tmp"}
    assert set(eval(lines[-1])) <= allowed | {"usr", "var", prefix_top}, lines[-1]


def test_the_private_root_still_runs_ordinary_programs(work_root, probe):
    if not probe.private_root:
        pytest.skip(f"no private root (mount namespace) here: {probe.warnings}")
    r = _run(
        """
        import decimal, json, os, sqlite3, subprocess, sys, tempfile, time
        print(time.strftime("%Z", time.localtime(0)) != "", json.dumps(decimal.Decimal(1) is not None))
        print(subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout.strip())
        print(subprocess.run(["/bin/sh", "-c", "echo sh"], capture_output=True, text=True).stdout.strip())
        with tempfile.NamedTemporaryFile() as f, open("/dev/null", "w") as null:
            null.write("x")
        print(len(os.urandom(8)), sqlite3.connect(":memory:").execute("select 1").fetchone()[0])
        """,
        work_root,
        timeout_s=30,
    )
    assert r.status == "passed", r
    assert r.stdout.split() == ["True", "true", "42", "sh", "8", "1"]


def test_cannot_write_outside_its_directory(work_root, tmp_path, probe):
    private = tmp_path / "escape.txt"  # in a root-owned 0700 tree
    shared_dir = tempfile.mkdtemp(prefix="bon_jax_test_shared_")
    os.chmod(shared_dir, 0o777)  # world-writable, outside the sandbox
    shared = os.path.join(shared_dir, "escape.txt")
    try:
        r = _run(
            f"""
            written = []
            for path in ({str(private)!r}, {shared!r}, "/escape.txt", "/usr/escape.txt"):
                try:
                    with open(path, "w") as f:
                        f.write("escaped")
                    written.append(path)
                except OSError as e:
                    print(path, type(e).__name__)
            assert not written, written
            """,
            work_root,
            timeout_s=30,
        )
        if probe.uid_dropped or probe.mount_namespace:
            assert not private.exists()
            assert not os.path.exists("/escape.txt") and not os.path.exists("/usr/escape.txt")
        if probe.mount_namespace:
            assert not os.path.exists(shared)
            assert r.status == "passed", r  # every write was refused inside
        else:
            pytest.skip(f"no mount namespace: world-writable dirs stay writable ({probe.warnings})")
    finally:
        shutil.rmtree(shared_dir)


def test_cannot_kill_its_parent_or_the_trainer(work_root, probe):
    if not (probe.uid_dropped or probe.pid_namespace):
        pytest.skip("neither a separate uid nor a pid namespace: the program could kill us")
    me = os.getpid()
    r1 = _run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", work_root, timeout_s=30)
    r2 = _run(f"import os, signal\nos.kill({me}, signal.SIGKILL)\n", work_root, timeout_s=30)
    r3 = _run(f"import os, signal\nos.killpg({os.getpgid(me)}, signal.SIGKILL)\n", work_root, timeout_s=30)
    # kill(-1) signals everything the program may signal: under a sandbox uid, nothing but its own.
    r4 = _run("import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('alive')\n", work_root, timeout_s=30)
    for r in (r1, r2, r3):
        assert r.status == "failed", r
        assert "PermissionError" in r.stderr or "ProcessLookupError" in r.stderr, r.stderr
    assert r4.status in ("passed", "failed") and r4.error is None, r4
    assert os.getpid() == me and os.getppid() > 1  # we (and our parent) are alive
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0


FORGER = """
import os, sys, time
fake = repr({"exit_code": 0, "signal": None, "cpu_s": 0.0, "max_rss_kb": 0}) + "\\n"
def forge():
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fd/{fd}", "w") as f:
                    f.write(fake)
            except OSError:
                pass
if os.fork() == 0:  # goes on forging after the program's end, to be the last word
    while True:
        forge()
time.sleep(0.2)
sys.exit(1)
"""


def test_cannot_forge_its_result(work_root):
    """Writing a fake exit report into every fd it can reach does not turn a failure into a pass."""
    r = _run(FORGER, work_root, timeout_s=30)
    assert r.status == "failed" and r.exit_code == 1, r


def test_network_is_unreachable(work_root, probe):
    if not probe.network_isolated:
        pytest.skip(f"no network namespace here: {probe.warnings}")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        r = _run(
            f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
            print("connected")
            """,
            work_root,
            timeout_s=30,
        )
        # The server does answer connections from this side.
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        for _ in range(500):  # until the server thread has taken our connection
            if accepted:
                break
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert r.status == "failed", r
    assert "connected" not in r.stdout
    assert "OSError" in r.stderr or "unreachable" in r.stderr, r.stderr
    assert len(accepted) == 1  # ours only
    for c in accepted:
        c.close()


def test_run_many_keeps_order_and_runs_from_a_jax_process(work_root):
    # JAX is initialised (and has threads) in this process: spawning must still be safe.
    assert float(jnp.sum(jnp.arange(4.0))) == 6.0
    programs = [f"print({i} * {i})" for i in range(6)] + ["raise SystemExit(1)"]
    rs = sandbox.run_many(programs, timeout_s=30, max_workers=2, work_root=work_root)
    assert [r.stdout for r in rs[:6]] == [f"{i * i}\n" for i in range(6)]
    assert [r.status for r in rs] == ["passed"] * 6 + ["failed"]
    assert os.listdir(work_root) == []
    assert sandbox.run_many([], timeout_s=1) == []


def test_enforced_properties_on_this_machine(probe):
    """Documents (and guards) what this kind of machine gives: root with namespaces."""
    if os.geteuid() != 0:
        pytest.skip("not root: the user-namespace path is exercised by the unprivileged test")
    assert probe.uid_dropped and probe.uid is not None and probe.uid >= sandbox.UID_BASE
    assert probe.nproc_limited and probe.rlimits["RLIMIT_NPROC"] == sandbox.Limits().max_processes
    if not (probe.network_isolated and probe.pid_namespace and probe.mount_namespace):
        pytest.skip(f"root without namespaces (a container?): {probe.warnings}")
    assert probe.readonly_root and probe.private_proc and probe.warnings == ()
    assert probe.private_root and probe.disk_quota == "tmpfs"


def test_unprivileged_caller_degrades_gracefully():
    """As a non-root caller the sandbox still runs programs, and says what it enforced."""
    python = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    if os.geteuid() != 0 or python is None:
        pytest.skip("needs root (to become an unprivileged user) and a system python3")
    where = tempfile.mkdtemp(prefix="bon_jax_test_unpriv_")  # pytest's tmp_path is root-only
    private = os.path.join(tempfile.gettempdir(), "bon_jax_sandbox.65534")
    had_private = os.path.exists(private)
    script = os.path.join(where, "unpriv.py")
    with open(script, "w") as f:
        f.write(
            textwrap.dedent(
                f"""
            import importlib.util, sys
            spec = importlib.util.spec_from_file_location("sb", {sandbox.__file__!r})
            sb = importlib.util.module_from_spec(spec)
            sys.modules["sb"] = sb
            spec.loader.exec_module(sb)
            r = sb.run("print(6 * 7)", timeout_s=30)
            f = sb.run(sys.argv[1], timeout_s=30)
            print(r.status, r.stdout.strip(), r.enforced.uid_dropped, f.status)
            # a mount namespace in a user namespace: the same private root and tmpfs quota
            print(r.enforced.private_root == (r.enforced.disk_quota == "tmpfs") == r.enforced.mount_namespace)
            """
            )
        )
    os.chmod(where, 0o755)
    os.chmod(script, 0o644)
    try:
        proc = subprocess.run(
            [python, script, FORGER],
            user=65534,
            group=65534,
            extra_groups=[],
            capture_output=True,
            text=True,
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            timeout=60,
        )
    finally:
        shutil.rmtree(where)
        if not had_private:  # the unprivileged user's sandbox cache, made by this test
            shutil.rmtree(private, ignore_errors=True)
    if proc.returncode and "Permission denied" in proc.stderr:
        pytest.skip(f"the unprivileged user cannot reach the code: {proc.stderr[-200:]}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["passed", "42", "False", "failed", "True"]


def test_degraded_without_namespaces_still_cleans_up(work_root):
    """Root without namespaces (a container): the uid and rlimits still contain, leftovers swept."""
    if os.geteuid() != 0:
        pytest.skip("the uid-based clean-up needs root")
    r = _run("print('hi')", work_root, timeout_s=30, namespaces=False)
    if not r.enforced.uid_dropped:
        pytest.skip(f"no interpreter reachable by an unprivileged uid: {r.enforced.warnings}")
    assert r.status == "passed" and r.stdout == "hi\n", r
    assert not (r.enforced.network_isolated or r.enforced.pid_namespace)
    assert not r.enforced.mount_namespace and r.enforced.warnings
    assert r.enforced.nproc_limited
    daemons = """
        import os, time
        for _ in range(3):
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(120)
                os._exit(0)
        """
    # Normal exit: the launcher kills what is left of the uid (_run checks uid and group).
    r = _run(daemons, work_root, timeout_s=30, namespaces=False)
    assert r.status == "passed", r
    # Timeout: the launcher kills the program, then the uid.
    r = _run(daemons + "time.sleep(600)\n", work_root, timeout_s=1.0, namespaces=False)
    assert r.status == "timeout", r
    r = _run(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        work_root,
        timeout_s=1.0,
        namespaces=False,
        limits=sandbox.Limits(max_processes=8),
    )
    assert r.status == "timeout", r
    assert subprocess.run(["true"]).returncode == 0


def test_works_without_pidfd(work_root, monkeypatch):
    """Older kernels / Pythons: the supervisor polls instead of waiting on a pidfd."""
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    r = _run("print(1)", work_root, timeout_s=30)
    assert (r.status, r.stdout) == ("passed", "1\n")
    r = _run("import time\ntime.sleep(60)\n", work_root, timeout_s=0.5)
    assert r.status == "timeout"


@pytest.mark.parametrize("end", ["sigkill", "exit"])
def test_runs_die_with_the_trainer_and_leave_no_directory(work_root, end):
    """If the process that called the sandbox ends mid-run, its runs are killed too, and its work
    directory does not stay: at a normal exit it is removed then (atexit), after a SIGKILL by the
    next run that uses the same place (its owner is dead)."""
    helper = textwrap.dedent(
        """
        import os, sys, threading, time
        from bon_jax import sandbox
        threading.Thread(
            target=sandbox.run, args=("import time\\ntime.sleep(600)\\n",),
            kwargs={"timeout_s": 600, "work_root": sys.argv[1]}, daemon=True,
        ).start()
        def ppid(p):
            try:
                return open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]
            except OSError:
                return None
        me = str(os.getpid())
        for _ in range(3000):
            kids = [p for p in os.listdir("/proc") if p.isdigit() and ppid(p) == me]
            if kids:
                break
            time.sleep(0.01)
        time.sleep(1.0)  # let the launcher set up and start the program
        print(kids[0], flush=True)
        if sys.argv[2] == "exit":
            sys.stdin.readline()
            sys.exit(0)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", helper, work_root, end],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    live = os.path.join(work_root, f"bon_jax_sbx_{sandbox._owner_tag()}_live")  # ours: alive
    unrelated = os.path.join(work_root, "bon_jax_sbx_unrelated")
    try:
        try:
            launcher = int(proc.stdout.readline())
            assert len(_pgroup_members(launcher)) >= 2  # launcher + init (+ the program)
            assert len(os.listdir(work_root)) == 1  # the run's work directory
            if end == "exit":
                proc.stdin.write("\n")
                proc.stdin.flush()
                assert proc.wait(30) == 0
        finally:
            proc.kill()
            proc.wait()
        for _ in range(500):
            if not _pgroup_members(launcher):
                break
            threading.Event().wait(0.01)
        assert _pgroup_members(launcher) == []
        if end == "sigkill":
            assert len(os.listdir(work_root)) == 1  # nobody was left to remove it
            os.mkdir(live)
            os.mkdir(unrelated)
            r = sandbox.run("print(1)", timeout_s=30, work_root=work_root)  # sweeps the dead's
            assert r.status == "passed", r
            assert sorted(os.listdir(work_root)) == sorted(map(os.path.basename, (live, unrelated)))
            os.rmdir(live)
            os.rmdir(unrelated)
        assert os.listdir(work_root) == []
    finally:  # the helper is dead: no new work directory can appear
        for d in os.listdir(work_root):
            shutil.rmtree(os.path.join(work_root, d))


def test_report_parses_from_many_threads_at_different_stack_depths():
    """Runs are supervised from threads, and each parses its launcher's report. On CPython 3.11 two
    parses at once (one thread's garbage collection runs a finaliser that lets another in) at
    different stack depths fail with "AST constructor recursion depth mismatch": this failed CI on
    the HumanEval canonical-solutions test. Without `_report_parse_lock` this test reproduces it."""
    line = repr({"props": {"warnings": ["w"] * 4, "uid": None, "x": [1, [2, [3, (4,)]]]}, "e": 0})

    class Finalised:
        def __del__(self):
            threading.Event().wait(0)  # Python code in a finaliser: a point to switch threads

    errors: list[BaseException] = []

    def parse_at_depth(depth: int) -> None:
        if depth:
            return parse_at_depth(depth - 1)
        cycle = Finalised()
        cycle.self = cycle  # only the cyclic collector frees it, during some later allocation
        assert sandbox._report_message(line)["e"] == 0

    def worker(depth: int) -> None:
        try:
            for _ in range(3000):
                parse_at_depth(depth)
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            errors.append(e)

    interval, thresholds = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(1e-6)
    gc.set_threshold(20, 1, 1)
    try:
        threads = [threading.Thread(target=worker, args=(depth,)) for depth in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
        gc.set_threshold(*thresholds)
    assert errors == []
