"""Atomic file output: a crash or a bad input never leaves half a file behind.

Every writer goes through :func:`atomic_write` (temp file in the same folder, fsync, then
``os.replace`` and an fsync of the folder, so a node that crashes leaves the old file or the new
one) or :func:`atomic_group`, which renames a set of files only once all of them were written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from softmaso.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _disk_full(path: Path, e: Exception) -> OSError | None:
    """The error to report when writing `path` failed for want of space (ENOSPC, or a writer
    such as torch.save that says only "file write failed"): naming the file and the space, or
    None where the disk is not full."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if not (isinstance(e, OSError) and e.errno == errno.ENOSPC) and (free is None or free > 2**20):
        return None
    need = f"it needs about {path.stat().st_size / 2**20:.1f} MB; " if path.exists() else ""
    shown = f"{free / 2**20:.1f} MB" if free is not None else "nothing"
    return OSError(errno.ENOSPC, f"No space left on device ({need}{shown} free)", str(path))


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk; a no-op where the filesystem
    cannot (some network filesystems refuse a folder's fsync)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    with contextlib.suppress(OSError):
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temps(path: Path) -> int:
    """Remove the temp files a killed writer of `path` left beside it (``.NAME.*.tmp``, as
    :func:`atomic_group` names them); how many there were."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


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


def check_output_dir(path: Path, *, where: str) -> Path:
    """UserError (naming `where`) unless `path` is, or could be made as, a writable directory.

    Creates nothing: the check runs before any work, and a bad path leaves no trace.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.is_symlink() or probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == path else f"is under {str(probe)!r}, a file"
        raise UserError(where, f"{str(path)!r} {what}; give a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(where, f"cannot write to directory {str(probe)!r} (permission denied)")
    return path


def check_output_file(path: Path, *, where: str) -> Path:
    """UserError unless `path` can be written as a file (its folder made if needed); creates
    nothing."""
    path = Path(path)
    if path.is_dir():
        raise UserError(where, f"{str(path)!r} is a directory; give a file name")
    check_output_dir(path.parent, where=where)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(where, f"cannot write {str(path)!r} (permission denied)")
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
        staged.append((Path(tmp), path))
        try:
            writer(Path(tmp))
            # mkstemp makes 0600, and some writers (safetensors) make the file anew: give the
            # usual permissions once it is written
            os.chmod(tmp, 0o666 & ~_UMASK)
            _fsync(Path(tmp))  # on disk before the rename can be: a node crash leaves old or new
        except Exception as e:
            if (full := _disk_full(path, e)) is not None:
                raise full from None
            raise

    try:
        yield stage
        for i, (tmp, final) in enumerate(staged):
            os.replace(tmp, final)
            staged[i] = (final, final)  # renamed: nothing left to clean
        for folder in {final.parent for _, final in staged}:
            _fsync(folder)  # the renames themselves are durable
    except BaseException:
        for tmp, final in staged:
            if tmp != final:
                tmp.unlink(missing_ok=True)
        raise
