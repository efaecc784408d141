"""Atomic writes: every output goes to a temporary name beside its target and is renamed
into place only once complete, so a refused or killed command never leaves a partial file."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile

from .errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str, *, directory: bool = False):
    """Yield a temporary path beside `target`; on success rename it onto `target`.

    With `directory=True` the temporary path is an empty directory and replaces a
    directory at `target` (the old one is removed only after the new one is complete).
    On any exception the temporary path is removed and `target` is left as it was.
    """
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
        _remove_stale(parent, os.path.basename(target))
        if directory:
            tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=parent)
        else:
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=parent)
            os.close(fd)
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())  # mkstemp/mkdtemp make them private
    except OSError as e:
        raise _unwritable(target, parent, e) from e
    try:
        yield tmp
        if directory:
            if os.path.isdir(target):
                old = tmp + ".old"
                os.rename(target, old)
                os.rename(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)
        raise


def _remove_stale(parent: str, base: str, min_age_s: float = 2.0) -> None:
    """Remove `.BASE.*.tmp` (and `.tmp.old`) left beside `BASE` by a run that was killed before it
    could clean up (SIGKILL, power loss). Only ones older than `min_age_s`: a concurrent writer's
    fresh temporary is left alone."""
    import time

    prefix = f".{base}."
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix) and n.endswith((".tmp", ".tmp.old"))]
    except OSError:
        return
    for name in names:
        path = os.path.join(parent, name)
        try:
            if time.time() - os.lstat(path).st_mtime < min_age_s:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        except OSError:
            pass


def _unwritable(target: str, parent: str, e: OSError) -> OutputError:
    """Why `target` cannot be written, said about the place (a missing parent, a read-only or
    virtual filesystem such as /proc, no permission), not as a bare errno."""
    if os.path.isdir(parent):
        why = ("no permission to create files there" if e.errno in (errno.EACCES, errno.EPERM)
               else "its filesystem is read-only" if e.errno == errno.EROFS
               else "no space left there" if e.errno == errno.ENOSPC
               else f"the directory does not accept new files ({e.strerror})")
        return OutputError(f"cannot write {target}: {parent} exists but {why}", "choose a writable output location")
    return OutputError(f"cannot write {target}: cannot create {parent} ({e.strerror})",
                       "choose a writable output location")


def write_bytes(target: str, data: bytes) -> None:
    """Write `data` to `target` atomically."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(target: str, text: str) -> None:
    """Write `text` to `target` atomically."""
    write_bytes(target, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_files(directory: str):
    """Yield a temporary directory inside `directory`; on success move every file in it into
    `directory` (`.index` files last, so a checkpoint's index never points at missing data).

    For outputs made of several files (a checkpoint prefix's `.index`, `.data-*`, `.meta`).
    On any exception the temporary directory is removed and nothing in `directory` changes.
    """
    directory = os.path.abspath(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".surgery.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise _unwritable(directory, directory, e) from e
    try:
        yield tmp
        names = sorted(os.listdir(tmp), key=lambda n: (n.endswith(".index"), n))
        for name in names:
            os.replace(os.path.join(tmp, name), os.path.join(directory, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def stderr_to(path: str = os.devnull):
    """Point file descriptor 2 at `path` (appending) while the block runs: C++ libraries and the
    processes started meanwhile write there, where no Python log level reaches them."""
    import sys

    sys.stderr.flush()
    saved, fd = os.dup(2), os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
