"""Creates the peers' virtual environments under benchmarks/.peers-venv/ (gitignored); `make bench-peers` runs it.

    jax/    google-tunix 0.1.7 and gemma 4.0.1 (+ kauldron) on jax 0.10.2 / flax 0.12.8, the versions bon_jax
            uses, so that the comparison is between samplers, not between XLA versions. Needs Python >= 3.12
            (gemma 4 does): PEERS_PYTHON, else python3.12 / python3.13 on PATH, else a pyenv 3.12+ (the
            lowest; tested with 3.12). Without
            one, the venv is made with this Python and holds tunix only (gemma is reported as not installed).
    torch/  transformers 5.23.0 on a CPU build of torch: torch==2.13.0+cpu where pip can find it (a local
            wheel), else torch 2.15.0+cpu from download.pytorch.org/whl/cpu. The PyPI Linux torch wheel is a
            CUDA build that does not import without several GB of nvidia wheels, so it is not used.

Every package comes from requirements-<venv>.txt, pinned, installed with --no-deps (the full set; the declared
dependency trees are several GB of things the samplers never import). A venv is rebuilt only when its
requirements file or this script changes (a stamp holds their hash). What could not be installed is written to
benchmarks/.peers-venv/status.json with the reason, and run.py reports it in the table.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent / ".peers-venv"
TORCH_CANDIDATES = [
    (["torch==2.13.0+cpu"], "local CPU wheel"),
    (["torch==2.15.0+cpu", "--index-url", "https://download.pytorch.org/whl/cpu", "--timeout", "30",
      "--retries", "1"], "pytorch.org CPU index"),
]


def python_312() -> str | None:
    cands = [os.environ.get("PEERS_PYTHON")] + [shutil.which(f"python3.{m}") for m in (12, 13)]
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    cands += sorted(glob.glob(f"{pyenv_root}/versions/3.1[2-9]*/bin/python3"))  # 3.12 first: tested
    for c in cands:
        if not c or not os.path.exists(c):
            continue
        out = subprocess.run([c, "-c", "import sys; print(sys.version_info >= (3, 12))"],
                             capture_output=True, text=True)
        if out.stdout.strip() == "True":
            return c
    return None


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args]
    print("  $", " ".join(cmd[2:]), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True)


def _tail(proc: subprocess.CompletedProcess, n: int = 3) -> str:
    lines = [l for l in (proc.stderr + proc.stdout).splitlines()
             if l.strip() and "is ignored: it is neither a file nor a directory" not in l]
    return " | ".join(lines[-n:])


def _fresh_venv(venv: Path, python: str, stamp: str) -> bool:
    """True if the venv is already built for `stamp`; else (re)creates it empty."""
    stamp_file = venv / ".bench-peers-stamp"
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        print(f"{venv.name}: up to date", flush=True)
        return True
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    return False


def _stamp(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.read_bytes() if isinstance(p, Path) else str(p).encode())
    return h.hexdigest()


def _done(venv: Path, stamp: str, status: dict) -> dict:
    (venv / ".bench-peers-status.json").write_text(json.dumps(status))
    (venv / ".bench-peers-stamp").write_text(stamp)
    return status


def install_jax() -> dict:
    venv, req = ROOT / "jax", HERE / "requirements-jax.txt"
    python = python_312()
    only_tunix = python is None
    python = python or sys.executable
    stamp, status = _stamp(req, Path(__file__), python), {}
    if _fresh_venv(venv, python, stamp):
        return json.loads((venv / ".bench-peers-status.json").read_text())
    lines = req.read_text().splitlines()
    if only_tunix:
        lines = [l for l in lines if not l.startswith(("gemma==", "kauldron=="))]
        status["gemma"] = "not installed: gemma 4 needs Python >= 3.12 and none was found (set PEERS_PYTHON)"
    reqfile = venv / "requirements.txt"
    reqfile.write_text("\n".join(lines) + "\n")
    proc = _pip(venv, "install", "--quiet", "--no-deps", "-r", str(reqfile))
    if proc.returncode:
        reason = f"not installed: pip failed: {_tail(proc)}"
        status["tunix"] = reason
        status.setdefault("gemma", reason)
        return status
    return _done(venv, stamp, status)


def install_torch() -> dict:
    venv, req = ROOT / "torch", HERE / "requirements-torch.txt"
    stamp = _stamp(req, Path(__file__), sys.executable)
    if _fresh_venv(venv, sys.executable, stamp):
        return json.loads((venv / ".bench-peers-status.json").read_text())
    proc = _pip(venv, "install", "--quiet", "--no-deps", "-r", str(req))
    if proc.returncode:
        return {"transformers": f"not installed: pip failed: {_tail(proc)}"}
    errors = []
    for args, where in TORCH_CANDIDATES:
        proc = _pip(venv, "install", "--quiet", "--no-deps", *args)
        if proc.returncode == 0:
            break
        errors.append(f"{args[0]} ({where}): {_tail(proc, 1)}")
    else:
        return {"transformers": "not installed: no CPU torch build found: " + "; ".join(errors)}
    return _done(venv, stamp, {})


def main() -> None:
    ROOT.mkdir(parents=True, exist_ok=True)
    print(f"peers' venvs under {ROOT}", flush=True)
    status = {**install_jax(), **install_torch()}
    (ROOT / "status.json").write_text(json.dumps(status, indent=1) + "\n")
    for k, v in status.items():
        print(f"  {k}: {v}", flush=True)


if __name__ == "__main__":
    main()
