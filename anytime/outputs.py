"""Safe output folders: nothing the tool did not write is ever deleted or
overwritten, and replacing earlier results is crash-safe.

A results folder carries a manifest (``.anytime-manifest.json``) that marks
it as the tool's and lists every file the tool wrote there.  A command that
writes a folder does so through :class:`ResultsFolder`:

* the destination must be new, empty, or a results folder of the tool's that
  holds nothing but the files its manifest lists; anything else is refused
  with one :class:`OutputError` before any long work starts;
* the results are written into a staging folder beside the destination
  (which also proves the destination writable, up front) and put in place by
  one atomic exchange of the two folders (``renameat2(RENAME_EXCHANGE)`` on
  Linux; elsewhere two renames with the old results kept complete under a
  recognisable name until the new ones are in place): at every instant the
  old or the new results are complete on disk;
* a lock (``flock``, released by the kernel if the process dies) makes a
  second concurrent writer of the same destination refuse at once;
* leftovers of an interrupted run (staging folders, a set-aside old folder)
  are recognised by their manifest and cleaned, or restored, by the next
  run; a folder without the tool's manifest is never touched.

Long work whose results must survive being stopped (``anytime sweep``)
writes a :class:`GrowingFolder` instead: in place, file by file, each file
listed in the manifest before it exists, under the same lock and rules.

Torch-free: the simulator and the scheduler's commands use it too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import errno
import fcntl
import glob
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from nets.errors import OutputError

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "GrowingFolder", "OutputError", "ResultsFolder", "is_results_folder", "read_manifest",
           "write_new_file"]

MANIFEST = ".anytime-manifest.json"
_STAGING, _OLD, _LOCK = ".partial", ".old", ".lock"
_TMP = ".tmp-"  # a file written whole is first ".NAME.tmp-PID" beside it (GrowingFolder.write)
_FRESH = ".new-"  # prefix of the private folder a run makes before it becomes the staging folder


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a results folder of the tool's, or None."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tool") != "anytime" or not isinstance(data.get("files"), list):
        return None
    return data


def is_results_folder(folder: Path) -> bool:
    """Whether ``folder`` is a results folder the tool wrote."""
    return Path(folder).is_dir() and read_manifest(folder) is not None


def _files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def _foreign_files(folder: Path, manifest: dict) -> list[str]:
    """Files in ``folder`` the manifest does not list (someone else's)."""
    return sorted(_files_in(folder) - set(manifest["files"]) - {MANIFEST})


def _sibling(out: Path, suffix: str) -> Path:
    """A hidden name beside ``out`` that marks what it is for: ``.NAME.partial`` ..."""
    return out.with_name(f".{out.name}{suffix}")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2``); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        renameat2 = ctypes.CDLL(libc_name, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False  # kernel or file system without the exchange
    raise OSError(code, os.strerror(code), str(a))


def check_destination(out: Path) -> dict | None:
    """Raise :class:`OutputError` unless ``out`` may receive results; returns
    the manifest of the earlier results it would replace (None when new)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"{out} exists and is not a folder; choose a new or empty folder")
    if not out.exists() or not any(out.iterdir()):
        return None
    manifest = read_manifest(out)
    if manifest is None:
        raise OutputError(f"{out} is not empty and was not written by anytime; choose a new or empty folder "
                          "(nothing was changed)")
    foreign = _foreign_files(out, manifest)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(f"{out} holds files anytime did not write ({shown}); move them out or choose "
                          "another folder (nothing was changed)")
    return manifest


def _destination(out: str | Path) -> Path:
    """``out`` as an absolute path, refused when no folder can have that name."""
    if "\0" in str(out) or any(len(os.fsencode(part)) > 255 for part in Path(out).parts):
        raise OutputError(f"{str(out)[:60]!r}: not a usable folder name (NUL byte or a name over 255 bytes)")
    absolute = Path(os.path.abspath(out))  # "x/.." becomes the real parent, and is judged as such
    if not absolute.name:
        raise OutputError(f"{out!s:.80} is a file system root; choose a folder inside it")
    return absolute


def _lock(out: Path) -> int:
    """Take the lock of destination ``out`` (``.NAME.lock`` beside it, an
    ``flock`` the kernel releases if the process dies); refuse at once when
    another run holds it.  Returns the lock file's descriptor."""
    lock_path = _sibling(out, _LOCK)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"another anytime run is writing {out}; wait for it to finish") from None
        # the lock file may have been removed by the previous holder between
        # our open and our lock: then we locked a dead inode; try again
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _unlock(out: Path, fd: int) -> None:
    _sibling(out, _LOCK).unlink(missing_ok=True)
    os.close(fd)


def _check_parent(out: Path) -> None:
    parent = out.parent
    existing = next((p for p in [parent, *parent.parents] if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {parent}: permission denied or not a folder")


def _write_manifest(folder: Path, kind: str, status: str, files: list[str], details: dict) -> None:
    manifest = {"tool": "anytime", "kind": kind, "status": status, "files": files,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **details}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(folder / MANIFEST)


class ResultsFolder:
    """Write a results folder crash-safely::

        with ResultsFolder(out, kind="simulate") as staging:
            ...write files into staging...
        # out now holds them, with a manifest listing them

    On an exception inside the block the staging folder is removed and the
    earlier results (if any) stay as they were.
    """

    def __init__(self, out: str | Path, kind: str, details: dict | None = None):
        self.out = _destination(out)
        self.kind = kind
        self.details = details or {}
        self.staging = _sibling(self.out, _STAGING)
        self._lock_file: int | None = None

    # -- locking ------------------------------------------------------------
    def _acquire(self) -> None:
        self._lock_file = _lock(self.out)

    def _release(self) -> None:
        if self._lock_file is not None:
            _unlock(self.out, self._lock_file)
            self._lock_file = None

    # -- leftovers ----------------------------------------------------------
    def _recover(self) -> None:
        """Clean or restore what an interrupted run left (only the tool's)."""
        old = _sibling(self.out, _OLD)
        if old.exists() and read_manifest(old) is not None:
            if not self.out.exists():
                old.rename(self.out)  # the swap was interrupted after moving the old results aside
                log.warning("restored the earlier results of %s from an interrupted run", self.out)
            else:
                shutil.rmtree(old)
        if self.staging.exists():
            if read_manifest(self.staging) is None:
                raise OutputError(f"{self.staging} is in the way and was not written by anytime; remove it")
            shutil.rmtree(self.staging)  # an interrupted run's partial results
            log.info("removed the partial results of an interrupted run: %s", self.staging)
        for fresh in self.out.parent.glob(f"{glob.escape(_sibling(self.out, _FRESH).name)}*"):
            # a run killed between making its private folder and naming it the staging folder;
            # under the lock no other run is between those steps, and the folder holds at most
            # the manifest it was being marked with (anything more is not ours to remove)
            if fresh.is_dir() and not fresh.is_symlink() and {p.name for p in fresh.iterdir()} <= {MANIFEST}:
                shutil.rmtree(fresh)
                log.info("removed the empty folder of an interrupted run: %s", fresh)

    # -- the context ----------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`OutputError` now if the destination could not take
        the results (for commands that work long before they write)."""
        _check_parent(self.out)
        check_destination(self.out)
        earlier = read_manifest(self.out) if self.out.is_dir() else None
        if earlier is not None and earlier.get("kind") != self.kind:  # e.g. a sweep's runs, which took hours
            raise OutputError(f"{self.out} holds results of 'anytime {earlier.get('kind')}', not of "
                              f"'anytime {self.kind}'; choose another folder (nothing was changed)")

    def __enter__(self) -> Path:
        self.check()  # refuses a foreign destination before anything is created beside it
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {parent}: {exc.strerror}") from None
        try:
            self._acquire()
        except OSError as exc:
            raise OutputError(f"cannot write into {parent}: {exc.strerror}") from None
        try:
            self._recover()
            check_destination(self.out)
            # made under a private name and marked before it takes the staging
            # name, so a folder found under that name is always the tool's
            fresh = Path(tempfile.mkdtemp(prefix=_sibling(self.out, _FRESH).name, dir=self.out.parent))
            umask = os.umask(0)
            os.umask(umask)
            fresh.chmod(0o777 & ~umask)  # mkdtemp's private 0700 is not what a results folder wants
            self._write_manifest(fresh, status="partial")
            fresh.rename(self.staging)
        except BaseException:
            self._release()
            raise
        return self.staging

    def _write_manifest(self, folder: Path, status: str) -> None:
        files = sorted(_files_in(folder) - {MANIFEST}) if status == "complete" else []
        _write_manifest(folder, self.kind, status, files, self.details)

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if kind is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
                return
            self._write_manifest(self.staging, status="complete")
            self._swap()
        finally:
            self._release()

    def _swap(self) -> None:
        if not self.out.exists():
            self.staging.rename(self.out)
            return
        check_destination(self.out)  # nothing foreign appeared while we worked
        if _exchange(self.staging, self.out):
            shutil.rmtree(self.staging)  # now holds the old results
            return
        old = _sibling(self.out, _OLD)
        self.out.rename(old)  # old results complete under a name _recover knows
        self.staging.rename(self.out)
        shutil.rmtree(old)


class GrowingFolder:
    """A results folder written in place, file by file, for long work that
    must survive being stopped (``anytime sweep``'s ``runs.jsonl``, appended
    run by run, is read back to resume)::

        with GrowingFolder(out, kind="sweep") as folder:
            log = folder.open_append("runs.jsonl")   # listed in the manifest before it exists
            folder.write("summary.json", text)       # atomically (beside, then rename)

    The same rules as :class:`ResultsFolder`: the destination must be new,
    empty or a folder of the tool's *of the same kind* holding nothing but
    what its manifest lists; it is locked while open; every file is listed in
    the manifest before it is created, so the next run recognises all of it
    (and removes only the temporary files of a listed name that a killed
    write left).  Nothing is swapped or deleted: a stopped run leaves the
    folder as far as it got, marked ``status: growing``; a finished one
    ``complete``.
    """

    def __init__(self, out: str | Path, kind: str, details: dict | None = None):
        self.out = _destination(out)
        self.kind = kind
        self.details = details or {}
        self.files: set[str] = set()
        self._lock_file: int | None = None

    def __enter__(self) -> "GrowingFolder":
        _check_parent(self.out)
        earlier = read_manifest(self.out) if self.out.is_dir() and not self.out.is_symlink() else None
        if earlier is None:
            check_destination(self.out)  # a foreign folder is refused before anything is made beside it
        self._check_kind(earlier)
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = _lock(self.out)
        except OSError as exc:
            raise OutputError(f"cannot write into {self.out.parent}: {exc.strerror}") from None
        try:
            manifest = read_manifest(self.out) if self.out.is_dir() else None
            if manifest is not None:
                self._remove_torn_writes(manifest)
            manifest = check_destination(self.out)  # under the lock: what it holds now
            self._check_kind(manifest)
            self.files = set(manifest["files"]) if manifest else set()
            self.out.mkdir(exist_ok=True)
            self._mark("growing")
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._mark("complete" if kind is None else "growing")
        finally:
            self._release()

    def path(self, name: str) -> Path:
        """The path of file ``name`` (relative, '/'-separated), listed in the
        manifest from now on; its folders are made."""
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts or name == MANIFEST:
            raise OutputError(f"{name!r}: not a file name inside the results folder")
        if name not in self.files:
            self.files.add(name)
            self._mark("growing")
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def open_append(self, name: str):
        """File ``name`` opened to append bytes (created when missing)."""
        return open(self.path(name), "ab")

    def write(self, name: str, data: bytes | str) -> Path:
        """Write file ``name`` whole, atomically: beside it, synced, then renamed."""
        path = self.path(name)
        tmp = path.with_name(f".{path.name}{_TMP}{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        return path

    def _check_kind(self, manifest: dict | None) -> None:
        if manifest is not None and manifest.get("kind") != self.kind:
            raise OutputError(f"{self.out} holds results of 'anytime {manifest.get('kind')}', not of "
                              f"'anytime {self.kind}'; choose another folder (nothing was changed)")

    def _remove_torn_writes(self, manifest: dict) -> None:
        """Temporary files of listed names that a killed :meth:`write` left."""
        for name in manifest["files"]:
            path = self.out / name
            for tmp in path.parent.glob(f"{glob.escape('.' + path.name + _TMP)}*"):
                if tmp.is_file() and not tmp.is_symlink():
                    tmp.unlink()
                    log.info("removed the temporary file of an interrupted write: %s", tmp)

    def _mark(self, status: str) -> None:
        _write_manifest(self.out, self.kind, status, sorted(self.files), self.details)

    def _release(self) -> None:
        if self._lock_file is not None:
            _unlock(self.out, self._lock_file)
            self._lock_file = None


def write_new_file(path: str | Path, data: bytes | str, replace: bool = False) -> Path:
    """Write one file atomically (beside, then rename); refuse to overwrite an
    existing file unless ``replace`` (the caller has checked it is its own)."""
    path = Path(path)
    if path.exists() and not replace:
        raise OutputError(f"{path} exists; choose another name (nothing was changed)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)
    return path
