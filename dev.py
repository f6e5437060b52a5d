"""Two-command entry point for a fresh machine that has only python3.

    python3 dev.py repro    # create .venv if needed, then `dvc repro` the default pipeline (only the
                            # configured `families`' stages under a GPU preset)
    python3 dev.py test     # create .venv if needed, then run the test suite
    python3 dev.py lab      # JupyterLab on the notebooks (adds --allow-root when run as root)
    python3 dev.py env      # only create / refresh the environment
    python3 dev.py preset NAME   # write a paper preset (presets/NAME.yaml) into params.yaml, validated

The environment is a plain venv in `.venv/` with exactly `requirements.txt` plus this package
(editable). It is rebuilt when requirements.txt or pyproject.toml change (a hash stamp).
Extra arguments after the command go to pytest / dvc repro / jupyter lab.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".ddo-stamp"
PYTHON = VENV / "bin" / "python"


def _requirements_hash() -> str:
    digest = hashlib.sha256()
    for name in ("requirements.txt", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def _run(command: list[str], **kwargs) -> None:
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, **kwargs)


def ensure_env() -> None:
    """Create or refresh `.venv` so that it holds exactly the pinned stack."""
    wanted = _requirements_hash()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        _run([sys.executable, "-m", "venv", str(VENV)])
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    _run(pip + ["-r", "requirements.txt"])
    _run(pip + ["--no-deps", "--no-build-isolation", "-e", "."])
    STAMP.write_text(wanted)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(DVC_NO_ANALYTICS="1", MPLBACKEND="Agg", PYTHONHASHSEED="0")
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _repro_targets() -> list[str]:
    """The configured families' stages (params.yaml `families`); none = the whole pipeline."""
    code = "from ddo_lib.pipeline import params; print(' '.join(params.repro_targets('params.yaml')))"
    return subprocess.run([str(PYTHON), "-c", code], cwd=ROOT, env=_env(), check=True, capture_output=True,
                          text=True).stdout.split()


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"repro", "test", "lab", "env", "preset"}:
        print(__doc__)
        return 2
    command, extra = argv[0], argv[1:]
    ensure_env()
    if command == "env":
        return 0
    if command == "test":
        args = [str(PYTHON), "-m", "pytest", *(extra or ["-q"])]
    elif command == "preset":
        args = [str(PYTHON), "-m", "ddo_lib.pipeline.presets", *extra]
    elif command == "repro":
        args = [str(VENV / "bin" / "dvc"), "repro", *(extra or _repro_targets())]
    else:
        root_flag = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        args = [str(VENV / "bin" / "jupyter"), "lab", "notebooks", *root_flag, *extra]
    return subprocess.run(args, cwd=ROOT, env=_env()).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
