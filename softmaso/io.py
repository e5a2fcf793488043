"""Atomic file output: a crash or a bad input never leaves half a file behind.

Every writer goes through :func:`atomic_write` (temp file in the same folder, then
``os.replace``) or :func:`atomic_group`, which renames a set of files only once all of them
were written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from softmaso.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def ensure_writable_dir(path: Path, *, where: str) -> Path:
    """Create `path` if needed and prove it is writable; UserError (naming `where`) if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UserError(where, f"cannot write to directory {str(path)!r} ({reason})") from None
    return path


def atomic_write(path: Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then rename the temp file onto `path`."""
    with atomic_group() as stage:
        stage(path, writer)
    return Path(path)


@contextlib.contextmanager
def atomic_group() -> Iterator[Callable[[Path, Callable[[Path], None]], None]]:
    """Stage several files; they all appear at the end of the block, or none does.

    >>> with atomic_group() as stage:
    ...     stage(Path("a.csv"), lambda tmp: df.to_csv(tmp))
    ...     stage(Path("a.png"), lambda tmp: fig.savefig(tmp, format="png"))
    """
    staged: list[tuple[Path, Path]] = []

    def stage(path: Path, writer: Callable[[Path], None]) -> None:
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        staged.append((Path(tmp), path))
        writer(Path(tmp))

    try:
        yield stage
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
