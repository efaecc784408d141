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
