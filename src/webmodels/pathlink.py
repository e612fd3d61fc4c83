"""Put `webmodels` on the PATH of a new shell, as pipx does: a link to this checkout's .venv/bin/webmodels.

`make up` runs this first, so the commands its banner and the README print (`webmodels kill prefork
--worker`) work as printed in any other terminal, not only inside an activated venv.

Where: the first directory on a *fresh login shell's* PATH (asked of `bash -lc` with a clean environment,
after creating ~/.local/bin, which Debian's and Ubuntu's default ~/.profile then add) that is under $HOME and
writable — else /usr/local/bin when writable (root). Never a system directory dpkg owns, never over a file
that is not such a link. If nothing fits, it says how to reach the command instead; it never fails the
`make up` that runs it. `python -m webmodels.pathlink --remove` takes the link away.
WEBMODELS_LINK_SYSTEM_DIRS (colon-separated, default /usr/local/bin) names the directories outside $HOME it
may use; empty: none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

NAME = "webmodels"


def fresh_path(home: Path) -> list[str]:
    """The PATH a new login shell of this user starts with (what a newcomer's next terminal has)."""
    bash = shutil.which("bash") or "/bin/bash"
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", **{k: os.environ[k] for k in ("USER", "LOGNAME", "SHELL")
                                                          if k in os.environ}}
    try:
        res = subprocess.run([bash, "-lc", 'printf %s "$PATH"'], env=env, capture_output=True, text=True,
                             timeout=20, stdin=subprocess.DEVNULL)
        out = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return [d for d in (out or os.environ.get("PATH", "")).split(":") if d]


def ours(link: Path) -> bool:
    """True if LINK is free, or a link to some checkout's .venv/bin/webmodels (ours to replace)."""
    if not os.path.lexists(link):
        return True
    return link.is_symlink() and os.readlink(link).endswith(f"/.venv/bin/{NAME}")


def choose(dirs: list[str], home: Path, system: list[str]) -> Path | None:
    """The directory to link into: on DIRS, under HOME (or one of SYSTEM), writable, and free or ours."""
    home_s = str(home.resolve()).rstrip("/") + "/"
    for allowed in (lambda d: (str(Path(d).resolve()) + "/").startswith(home_s), lambda d: d in system):
        for d in dirs:
            if allowed(d) and os.path.isdir(d) and os.access(d, os.W_OK) and ours(Path(d) / NAME):
                return Path(d)
    return None


def link(target: Path, home: Path | None = None, system: list[str] | None = None) -> tuple[Path | None, str]:
    """Link NAME to TARGET in the right directory; return (the link or None, one line for people)."""
    home = home or Path.home()
    if system is None:
        system = [d for d in os.environ.get("WEBMODELS_LINK_SYSTEM_DIRS", "/usr/local/bin").split(":") if d]
    try:
        (home / ".local" / "bin").mkdir(parents=True, exist_ok=True)  # a default ~/.profile adds it if it exists
    except OSError:
        pass
    dirs = fresh_path(home)
    where = choose(dirs, home, system)
    if where is None:
        return None, (f"{NAME}: no directory on a new shell's PATH to link it into; run it as {target}, or add "
                      f"~/.local/bin to your PATH and run `make up` again")
    path = where / NAME
    if path.is_symlink() and os.readlink(path) == str(target):
        note = f"{NAME}: on your PATH as {path} → {target}"
    else:
        tmp = where / f".{NAME}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, path)
        note = f"{NAME}: linked {path} → {target}"
    found = shutil.which(NAME, path=":".join(dirs))
    if found and Path(found) != path:
        note += f" — but a new shell finds {found} first"
    elif str(where) not in os.environ.get("PATH", "").split(":"):
        note += f" (new shells find it; in this one: export PATH=\"{where}:$PATH\")"
    return path, note


def linked(target: Path, home: Path | None = None) -> Path | None:
    """Where a new shell finds the link to TARGET (None: it finds none)."""
    for d in fresh_path(home or Path.home()):
        p = Path(d) / NAME
        if p.is_symlink() and os.readlink(p) == str(target):
            return p
    return None


def hint() -> str:
    """"" when this shell runs our `webmodels`; else one line saying how to reach it."""
    target = Path(sys.prefix) / "bin" / NAME
    found = shutil.which(NAME)
    if found and Path(found).resolve() == target.resolve():
        return ""
    where = linked(target)
    if where is not None:
        return f"(`{NAME}` is linked at {where}: a new terminal finds it)"
    return f"(`{NAME}` is not on your PATH: `make up` links it, or run {target})"


def remove(target: Path, home: Path | None = None) -> str:
    """Remove the link to TARGET wherever `link` may have put it."""
    p = linked(target, home)
    if p is None:
        return f"{NAME}: no link to {target} found"
    p.unlink()
    return f"{NAME}: removed {p}"


def main(argv: list[str]) -> int:
    target = Path(sys.prefix) / "bin" / NAME
    if not target.exists():
        print(f"{NAME}: {target} does not exist (run make install)", file=sys.stderr)
        return 1
    if argv == ["--remove"]:
        print(remove(target))
        return 0
    try:
        print(link(target)[1])
    except OSError as exc:  # never fail `make up` over a convenience
        print(f"{NAME}: could not link it onto your PATH ({exc}); run it as {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
