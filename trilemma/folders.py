"""Output folders: writable, and owned by one live process at a time.

Two runs writing into one folder mix their work up: two `generate` runs leave a metadata.jsonl that
names one run's prompts for the other's images, two trainings interleave their logs and checkpoints.
A lock file holding the owner's PID and host refuses the second run with one line; a lock whose
process is gone (killed, crashed) is stale and taken over.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

LOCK_NAME = ".trilemma.lock"


def ensure_writable(folder: str | Path) -> Path:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"cannot write to {folder}: {e.strerror or e}") from None
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class FolderLock:
    """`with FolderLock(folder, "generate"):` holds the folder for this process, or raises FolderInUse."""

    def __init__(self, folder: str | Path, what: str):
        self.path, self.what, self.held = Path(folder) / LOCK_NAME, what, False

    def __enter__(self) -> "FolderLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text())
                    live = owner.get("host") != me["host"] or _alive(int(owner["pid"]))
                except (OSError, ValueError, KeyError, TypeError):
                    owner, live = {}, False  # a lock cut short by a crash while it was written: stale
                if live:
                    raise FolderInUse(f"{self.path.parent} is in use by a running {owner.get('what', 'trilemma')} "
                                      f"(process {owner.get('pid')} on {owner.get('host')}); wait for it to finish or "
                                      f"choose another folder (if no such process runs, delete {self.path})") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise FolderInUse(f"could not take {self.path}; another run took it at the same moment")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


class FolderInUse(OSError):
    pass
