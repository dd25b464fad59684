"""One exception type for user-facing problems: the CLI prints it as one line, never a traceback.

`os_error_line` is the one wording of a filesystem refusal (disk full, permission, a file where a
directory is expected), naming the path; `warn` is the one way a non-fatal note reaches the user.
"""

from __future__ import annotations

import errno
import sys


class SoftPromptError(Exception):
    """A problem with the user's input (file, field, value) that the user can fix."""


_HINTS = {
    errno.ENOSPC: "the disk is full: free some space",
    errno.EDQUOT: "the disk quota is exceeded: free some space",
    errno.EACCES: "no permission: check the path's owner and mode",
    errno.EPERM: "not permitted: check the path's owner and mode",
    errno.EROFS: "the filesystem is read-only: choose a writable path",
    errno.ENOTDIR: "a file stands where a directory is expected",
    errno.EISDIR: "a directory stands where a file is expected",
    errno.ELOOP: "a symbolic link loop: fix or replace the link",
}


def os_error_line(e: OSError) -> str:
    """`PATH: what the OS said (what to do)` for an OSError, in one line."""
    where = e.filename if e.filename is not None else None
    what = e.strerror or str(e) or type(e).__name__
    hint = _HINTS.get(e.errno or -1)
    text = f"{where}: {what}" if where is not None else what
    return f"{text} ({hint})" if hint else text


def warn(message: str) -> None:
    """A one-line note on stderr that does not stop the command."""
    print(f"softprompt: warning: {message}", file=sys.stderr, flush=True)
