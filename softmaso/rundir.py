"""Run directories, the documented contract, and everything that reads or writes one.

A run directory explains itself::

    config.yaml      the resolved RunConfig (what `softmaso train --print-config` shows)
    env.json         versions, device, git commit, host, command line, date
    metrics.jsonl    one JSON line per finished epoch
    checkpoint.pt    model + optimiser + history, written atomically after each epoch
    result.json      written once at the end: status finished or diverged, accuracies, time
    model.safetensors  the final effective weights (orthogonal reparametrisations applied)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from softmaso.config import RunConfig, dump_yaml
from softmaso.errors import RunConflict, UserError
from softmaso.io import atomic_write

CONFIG, ENV, METRICS, CHECKPOINT, RESULT, WEIGHTS = (
    "config.yaml",
    "env.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "result.json",
    "model.safetensors",
)
DEFAULT_ROOT = Path("results/runs")
GRID = "grid.json"  # at an experiment's root: the runs `softmaso reproduce` expects
LOCK = ".lock"  # held (flock) by the process training the run
LAUNCHES = "launches.jsonl"  # one line per launch of the run (env.json: the first launch)
ERROR = "error.txt"  # why training this run failed (a grid wrote it); gone once it trains again
DAMAGED = "damaged: "  # how error.txt starts for a run whose files are damaged (a checkpoint)


def config_hash(cfg: RunConfig) -> str:
    """Short stable hash of the resolved config: two runs share a directory only if equal."""
    text = json.dumps(cfg.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_name(cfg: RunConfig) -> str:
    """Readable name from the settings that matter most, plus the config hash."""
    m = cfg.model
    act = m.activation if m.activation != "beta" else f"beta-{m.spec}"
    parts = [cfg.data.name, f"ortho-{cfg.ortho.mode}", f"lr{cfg.optim.lr:g}", act]
    if m.width != 1:
        parts.append(f"w{m.width:g}")
    parts += [f"seed{cfg.seed}", config_hash(cfg)]
    return "_".join(parts)


def default_run_dir(cfg: RunConfig, root: Path = DEFAULT_ROOT) -> Path:
    return Path(root) / cfg.recipe / run_name(cfg)


@functools.cache
def git_commit() -> str | None:
    """HEAD of the repository softmaso is imported from, with '-dirty' if it has changes.

    Read once per process: a long-lived process (a grid's worker) runs the code it imported,
    so its runs record the commit of its start, not the checkout's later state."""
    git = ["git", "-C", str(Path(__file__).resolve().parent.parent)]
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=5)
    try:
        head = run([*git, "rev-parse", "HEAD"])
        if head.returncode != 0:
            return None
        dirty = run([*git, "status", "--porcelain", "--untracked-files=no"])
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device) -> dict[str, Any]:
    """What produced a result: versions, device, commit, host, command line, date."""
    import torch
    import torchvision

    from softmaso import __version__

    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else cpu_name()
    dev = {"type": device.type, "name": name, "threads": torch.get_num_threads()}
    if cuda:
        dev.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return {
        "softmaso": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": dev,
        "host": platform.node(),
        "platform": platform.platform(),
        "argv": sys.argv,
        "date": now(),
    }


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo, else what platform knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def record_error(run_dir: Path, why: str, *, damaged: bool = False) -> None:
    """Write why a run cannot train into its error.txt (:func:`status` then says ``failed``, or
    ``damaged``), making the folder if the run never began. Best effort: a full disk may refuse
    even this."""
    text = f"{DAMAGED if damaged else ''}{why.rstrip()}\n"
    with contextlib.suppress(OSError):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(run_dir) / ERROR, lambda tmp: tmp.write_text(text))


def read_grid(root: Path) -> dict[str, Any] | None:
    """The results folder's grid.json (None if it has none); UserError, naming the file, if it
    is not a softmaso grid: a JSON object with a ``runs`` list (``experiment``: a name,
    ``smoke``: true or false, where given)."""
    path = Path(root) / GRID
    if not path.exists():
        return None
    doc = read_json(path)
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("runs", []), list)
        or not isinstance(doc.get("experiment", ""), str)
        or not isinstance(doc.get("smoke", False), bool)
    ):
        raise UserError(
            str(path),
            "not a softmaso grid (a JSON object with experiment, smoke and a runs list); "
            "remove it, or choose another results folder",
        )
    entries = doc.get("runs", [])  # entries that are not {"dir": ...} objects are skipped
    doc["runs"] = [e for e in entries if isinstance(e, dict) and isinstance(e.get("dir"), str)]
    return doc


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The run directory's config.yaml as a mapping; None if absent or not a YAML mapping."""
    import yaml

    try:
        tree = yaml.safe_load((Path(run_dir) / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return tree if isinstance(tree, dict) else None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config mapping -> {"optim.lr": ..., ...}, the dotted keys of ``--set``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def write_json(path: Path, doc: dict[str, Any]) -> None:
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(doc, indent=2) + "\n"))


@contextlib.contextmanager
def claim(run_dir: Path) -> Iterator[bool]:
    """Hold the run's lock for the block; yields False (without waiting) if another has it.

    An exclusive ``fcntl.flock`` on ``run_dir/.lock``, taken by `softmaso train` and `softmaso
    reproduce`, so two processes never train one run; the kernel drops it when its process
    dies, so a killed run leaves no stale lock. Where the filesystem has no flock (Lustre
    mounted without it), an exclusive lock file instead (:func:`_held_file`). A directory the
    claim made is removed again if nothing was written in it.
    """
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _flocked(run_dir / LOCK) as mine:
            yield mine
    finally:
        # nothing was written (bad data, say): the folder goes; not empty, another process
        # claims it now; gone, another claim that made it removed it first
        with contextlib.suppress(OSError):
            if made and not any(run_dir.iterdir()):
                run_dir.rmdir()


NO_FLOCK = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)  # a filesystem without


def _names(path: Path, file: os.stat_result) -> bool:
    """Whether `path` still names the file of stat result `file` (not removed, nor made anew)."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (file.st_dev, file.st_ino)


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[bool]:
    """flock `path` (made if needed) for the block, and remove it on the way out.

    The file is removed while still locked. A process that opened it before the removal gets
    its flock only afterwards, on a file no longer at `path`: so, once locked, each process
    checks that `path` still names the file it locked, and starts again if not."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder, emptied, was removed by a claim that made it
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        except OSError as e:
            os.close(fd)
            if e.errno not in NO_FLOCK:
                raise
            with contextlib.suppress(OSError):  # no flock here: the file locks nothing
                path.unlink()
            with _held_file(path.with_name(HELD)) as mine:
                yield mine
            return
        if _names(path, os.fstat(fd)):
            break
        os.close(fd)  # locked a file that was removed meanwhile: try the one there now
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}@{os.uname().nodename}\n".encode())
        yield True
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # still locked: anyone who opened it will find it gone
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


HELD = ".lock.held"  # the lock file where flock is missing: created with O_EXCL, "pid@host"
TAKEOVER_S = 600  # a takeover marker older than this was left by a process killed in it


@contextlib.contextmanager
def _held_file(path: Path) -> Iterator[bool]:
    """An exclusive lock by creating `path` with O_EXCL (atomic on NFS v3+ and Lustre too),
    holding "pid@host"; removed on exit. A lock left by a dead process of this host is taken
    over (:func:`_take_over`); one from another host is respected (it cannot be checked)."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            if not _take_over(path):
                yield False
                return
        except FileNotFoundError:  # the folder, emptied, was removed by a claim that made it
            path.parent.mkdir(parents=True, exist_ok=True)
    else:
        yield False
        return
    mine = os.fstat(fd)  # this process's lock file, whatever happens next
    try:
        try:
            os.write(fd, f"{os.getpid()}@{os.uname().nodename}\n".encode())
        finally:
            os.close(fd)  # a failed write (a full disk) removes the file below and raises
        yield True
    finally:
        with contextlib.suppress(OSError):
            if _names(path, mine):  # (not taken over)
                path.unlink()


def _take_over(path: Path) -> bool:
    """Remove the lock file at `path` if it is stale (:func:`_stale`); whether it was, or is
    gone: then the caller tries the lock again.

    Two processes that find one stale file must not both remove it (the second would remove
    the fresh lock the first made meanwhile). So only the process that creates, with O_EXCL, a
    marker named after that very file (inode and modification time) removes it, and only if
    `path` still names it, with the same text."""
    try:
        seen, text = os.stat(path), path.read_text()
    except FileNotFoundError:
        return True  # released meanwhile
    except OSError:
        return False
    if not _stale(text):
        return False
    marker = path.with_name(f"{path.name}.{seen.st_ino}-{seen.st_mtime_ns}.takeover")
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:  # another process takes it over now (or was killed doing so)
        with contextlib.suppress(OSError):
            if time.time() - marker.stat().st_mtime > TAKEOVER_S:
                marker.unlink()
        return True
    try:
        there = os.stat(path)
        same = (there.st_ino, there.st_mtime_ns) == (seen.st_ino, seen.st_mtime_ns)
        if same and path.read_text() == text:
            path.unlink()
    except FileNotFoundError:
        pass
    finally:
        marker.unlink(missing_ok=True)
    return True


def _stale(text: str) -> bool:
    """Whether a lock file's text ("pid@host") names a dead process of this host."""
    try:
        pid, _, host = text.strip().partition("@")
        pid = int(pid)
    except ValueError:
        return False  # being written, or unreadable: not ours to remove
    if pid <= 0 or host != os.uname().nodename:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def result_problem(result: Any) -> str | None:
    """Why a result.json's content cannot be believed, or None if it can."""
    if not isinstance(result, dict):
        return f"result.json holds a {type(result).__name__}, not a JSON object"
    status = result.get("status")
    if status not in ("finished", "diverged"):
        return f"result.json has status {status!r} (finished or diverged expected)"
    if status == "finished":
        acc = result.get("final_test_acc")
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 1:
            return f"result.json has final_test_acc {acc!r} (a fraction in [0, 1] expected)"
    return None


def status(run_dir: Path) -> tuple[str, dict[str, Any] | None, str | None]:
    """(status, result, problem) of a run directory, the one vocabulary of resume, launcher and
    tables: ``new`` (nothing there), ``pending`` (config only), ``started`` (a checkpoint or
    metrics, no result: training, or interrupted), ``failed`` (error.txt says why, in
    `problem`; rerunning resumes it), ``finished`` and ``diverged`` (`result`: result.json's
    content), ``damaged`` (result.json, or a checkpoint, cannot be believed: `problem`)."""
    run_dir = Path(run_dir)
    path = run_dir / RESULT
    if path.exists():
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            return "damaged", None, "result.json is not readable JSON"
        problem = result_problem(result)
        if problem:
            return "damaged", None, problem
        return result["status"], result, None
    if (run_dir / ERROR).exists():
        why = (run_dir / ERROR).read_text(errors="replace").strip()
        if why.startswith(DAMAGED):  # a damaged checkpoint, found when the grid loaded it
            return "damaged", None, why[len(DAMAGED) :][:300]
        return "failed", None, why[-300:]
    if (run_dir / CHECKPOINT).exists() or (run_dir / METRICS).exists():
        return "started", None, None
    return ("pending" if (run_dir / CONFIG).exists() else "new"), None, None


# ------------------------------------------------------- checkpoints, metrics, result
CHECKPOINT_FORMAT = "softmaso-checkpoint-v1"


def checkpoint_state(
    *, cfg: RunConfig, data, epoch: int, history: list[dict], model: dict, optimizer: dict
) -> dict[str, Any]:
    """One run's checkpoint: config, epoch, history, model and Adam state dicts, as a snapshot
    (tensors copied to the host, rows copied), so training can go on while it is written."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "num_classes": data.num_classes,
        "in_channels": int(data.x_train.shape[1]),
        "epoch": epoch,
        "history": [dict(row) for row in history],
        "model": _on_host(model),
        "optimizer": _on_host(optimizer),
    }


def _on_host(tree: Any) -> Any:
    import torch

    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: _on_host(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_on_host(v) for v in tree)
    return tree


class CheckpointWriter:
    """Writes an epoch's checkpoints, then its metrics rows, on a background thread, so the
    next epoch trains meanwhile (a 30-run pack at full width writes 0.5 GB).

    One batch at a time, in order: :meth:`submit` first waits for the one before. A write's
    error is raised by the next :meth:`submit` or by :meth:`close`, which the epoch loop always
    calls before it returns (a kill leaves the previous checkpoint, the truth on resume, and a
    temp file that :func:`open_run` removes).
    """

    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def submit(
        self, checkpoints: list[tuple[Path, dict]], metrics: list[tuple[Path, list[dict]]]
    ) -> None:
        """Write each (path, checkpoint_state) and then each (run_dir, rows) in the background."""
        self.close()
        metrics = [(run_dir, [dict(row) for row in rows]) for run_dir, rows in metrics]

        def write() -> None:
            import torch

            try:
                for path, state in checkpoints:
                    atomic_write(Path(path), functools.partial(torch.save, state))
                for run_dir, rows in metrics:
                    write_metrics(run_dir, rows)
            except BaseException as e:  # raised in the training thread by close()
                self._error = e

        self._thread = threading.Thread(target=write, name="softmaso-checkpoints")
        self._thread.start()

    def close(self) -> None:
        """Wait for the batch in flight; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Read a softmaso checkpoint safely (weights_only); UserError if corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise UserError(str(path), "checkpoint not found")
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive
            raise UserError(str(path), "not a checkpoint (checkpoint.pt files are zip archives)")
    import torch

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # torch raises many types for truncated or foreign files
        raise UserError(
            str(path), "corrupt or truncated checkpoint (torch cannot read it)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(str(path), "not a softmaso checkpoint (no softmaso format marker)")
    return state


def export_weights(model, path: Path) -> None:
    """Final effective weights (parametrisations applied) as safetensors."""
    import copy

    from safetensors.torch import save_file
    from torch.nn.utils import parametrize

    plain = copy.deepcopy(model).cpu()
    for module in plain.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    tensors = {k: v.detach().contiguous() for k, v in plain.state_dict().items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp)))


def check_run_dir(cfg: RunConfig, run_dir: Path, finished: bool = False) -> None:
    """A run directory belongs to one config (from ``config.yaml``, else the checkpoint; the
    same values in another layout are the same config): RunConflict for another one."""
    saved, there = saved_config(run_dir)
    if saved is None:
        return
    if there is None:
        raise RunConflict(
            "--out",
            f"{saved} cannot be read as a softmaso config, so the run there cannot be checked "
            "against this one; choose another run directory (or restore that file)",
        )
    here = flatten(cfg.to_dict())
    diff = [k for k in [*here, *(k for k in there if k not in here)] if there.get(k) != here.get(k)]
    if not diff:
        return
    shown = "; ".join(
        f"{k}: {there.get(k, 'not set')} there, {here.get(k, 'not set')} here" for k in diff[:3]
    ) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
    if diff == [GROWS]:
        advice = (
            "a run is trained on to more epochs, never back to fewer; choose another run directory"
        )
    elif finished:
        advice = "it is a finished run; choose another run directory"
    elif all(k in there and k in here for k in diff):
        advice = (
            "choose another run directory, or --set those keys to the run's values to resume it"
        )
    else:  # keys one softmaso version has and another has not
        advice = "choose another run directory (the run there was made by another softmaso version)"
    raise RunConflict("--out", f"{run_dir} holds a run with a different config ({shown}); {advice}")


def saved_config(run_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """(file the run's config was read from, its flattened keys): (None, None) for no run yet,
    (file, None) for a file that is not a readable config."""
    saved, checkpoint = run_dir / CONFIG, run_dir / CHECKPOINT
    if saved.exists():
        tree = read_config(run_dir)
    elif checkpoint.exists():
        saved = checkpoint
        try:
            tree = load_checkpoint(checkpoint).get("config")
        except UserError:
            tree = None
    else:
        return None, None
    if not isinstance(tree, dict) or not isinstance(tree.get("data"), dict):
        return saved, None
    return saved, flatten(tree)


def launches(run_dir: Path) -> list[dict[str, Any]]:
    """Each launch's environment, oldest first (launches.jsonl, else env.json for runs from
    before it); unreadable lines (a line a crash cut short) are skipped."""
    out = []
    path = Path(run_dir) / LAUNCHES
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    for line in lines:
        with contextlib.suppress(ValueError):
            if isinstance(doc := json.loads(line), dict):
                out.append(doc)
    if not out and isinstance(env := read_json(Path(run_dir) / ENV), dict):
        out.append(env)
    return out


def read_metrics(run_dir: Path) -> list[dict]:
    """The epochs of a run's metrics.jsonl (unreadable lines, and lines without a whole epoch
    number, skipped); [] if there is none."""
    try:
        text = (run_dir / METRICS).read_text(errors="replace")  # a garbled line is skipped
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            epoch = row.get("epoch") if isinstance(row, dict) else None
            if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1:
                rows.append(row)
    return rows


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write(run_dir / METRICS, lambda tmp: tmp.write_text(text))


def open_run(cfg: RunConfig, run_dir: Path, device) -> None:
    """Make the run directory ready to train in: stale temp files gone, config written, this
    launch recorded (env.json: the first launch; launches.jsonl: a line per launch, so a
    resume with other threads or on another device leaves a trace)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(".*.tmp"):  # temp files of a writer that was killed mid-write
        stale.unlink(missing_ok=True)
    (run_dir / ERROR).unlink(missing_ok=True)  # a failed run trains again
    (run_dir / RESULT).unlink(missing_ok=True)  # a finished run trained on: started again
    atomic_write(run_dir / CONFIG, lambda tmp: tmp.write_text(dump_yaml(cfg)))
    env = environment(device)
    first = read_json(run_dir / ENV)
    if first is None:
        write_json(run_dir / ENV, env)
    earlier = [first] if isinstance(first, dict) and not (run_dir / LAUNCHES).exists() else []
    append_lines(run_dir / LAUNCHES, [*earlier, env])  # earlier: a run from before the file


def append_lines(path: Path, docs: list[dict[str, Any]]) -> None:
    """Append JSON lines to `path` in one write on an O_APPEND descriptor, then fsync: a crash
    leaves them all or a torn last line, which readers skip (:func:`launches`). A torn line
    left by an earlier crash is ended first, so it never swallows the new ones."""
    text = "".join(json.dumps(doc) + "\n" for doc in docs)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            text = "\n" + text
        data = text.encode()
        if os.write(fd, data) != len(data):  # a full disk: say so, as a write that raises would
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        os.fsync(fd)
    finally:
        os.close(fd)


def resume_state(run_dir: Path, device) -> dict | None:
    """The run's checkpoint, with metrics.jsonl rewritten from it; None if it has none.

    The checkpoint is the truth: a kill between it and the metrics write loses no epoch.
    """
    if not (run_dir / CHECKPOINT).exists():
        return None
    state = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
    write_metrics(run_dir, state["history"])
    return state


def finish_run(
    cfg: RunConfig,
    run_dir: Path,
    *,
    history: list[dict],
    status: str,
    wall_seconds: float,
    device,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """Write result.json (the run's end: finished or diverged) and return its content."""
    result = {
        "status": status,
        "final_test_acc": history[-1]["test_acc"] if history else None,
        "best_test_acc": max((r["test_acc"] for r in history), default=None),
        "epochs": len(history),
        "wall_seconds": wall_seconds,
        "recipe": cfg.recipe,
        "seed": cfg.seed,
        "data": cfg.data.name,
        "config_hash": config_hash(cfg),
        "device": str(device),
        "date": now(),
        **(extra or {}),
    }
    write_json(run_dir / RESULT, result)
    return result


GROWS = "train.epochs"  # the one key a run is trained on in (see :func:`trains_on`)


def check_unfinished(cfg: RunConfig, run_dir: Path) -> dict | None:
    """The skipped-run result if the run has ended (finished, or diverged: it would diverge
    again), None if it is to be trained (new, interrupted, failed, or trained on to more epochs:
    :func:`trains_on`); RunConflict if the directory is another's; UserError if its result.json
    is damaged."""
    state, done, problem = status(run_dir)
    if state == "damaged" and (run_dir / RESULT).exists():  # (a damaged checkpoint: tried again)
        raise UserError(
            str(run_dir / RESULT),
            f"damaged result.json ({problem}); delete it to resume the run from its checkpoint",
        )
    longer = trains_on(cfg, run_dir)
    if not longer:
        check_run_dir(cfg, run_dir, state == "finished")
    if longer and state == "finished":
        if not (run_dir / CHECKPOINT).exists():
            raise RunConflict(
                "--out",
                f"{run_dir} holds a finished {done['epochs']}-epoch run without its "
                f"{CHECKPOINT}, so it cannot be trained on to {cfg.train.epochs} epochs; "
                "choose another run directory",
            )
        return None  # open_run removes its result.json; the result is written anew at its end
    return None if done is None else {**done, "skipped": True}


def trains_on(cfg: RunConfig, run_dir: Path) -> bool:
    """Whether `cfg` is the run's config in `run_dir` with more ``train.epochs`` and nothing
    else changed: then the run is trained on from its last checkpoint, to the metrics of a run
    trained that long at once (nothing else depends on the number of epochs: the learning rate
    is constant, data order and augmentation depend on (seed, epoch) only)."""
    _, there = saved_config(run_dir)
    if there is None:
        return False
    here = flatten(cfg.to_dict())
    diff = {k for k in {*here, *there} if there.get(k) != here.get(k)}
    old, new = there.get(GROWS), here.get(GROWS)
    return diff == {GROWS} and isinstance(old, int) and isinstance(new, int) and new > old
