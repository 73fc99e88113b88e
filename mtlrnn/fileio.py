"""Writing files a user owns: atomically, and never onto the file being read.

Every file the package writes for a user (predict output, compare reports, summaries,
plots) goes through :func:`atomic_writer` or :func:`write_text_atomic`: the content is
written to a temporary file in the target's directory and renamed over the target only
when complete, so an interrupted write never leaves half a file and a failed write leaves
the old file as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8"
) -> Iterator[IO]:
    """Open a temporary file next to ``path``; rename it onto ``path`` on success.

    ``mode`` is ``"w"`` (text, ``encoding``, newlines untranslated) or ``"wb"``. On an
    exception the temporary file is removed and ``path`` is untouched. The directory of
    ``path`` must exist (FileNotFoundError otherwise). A symlink at ``path`` is replaced by
    the new file; the file it pointed to is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode: must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    # The directory as spelled (not normalised: with a symlinked ``a``, ``a/../x`` is not
    # ``./x``), so the temporary file lands where the rename puts the result.
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        if mode == "wb":
            f: IO = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding, newline="")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(text)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file (symlinks and hard links included).

    False when ``b`` does not exist yet.
    """
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
