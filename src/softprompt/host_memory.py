"""The host allocator told to keep what a training step frees, so that the next step does not fault it in again.

glibc's malloc serves large blocks (above a threshold that never exceeds 32 MB) with mmap and returns them to the
kernel when freed, and hands freed memory at the top of its heap back too (trim). A CPU training step allocates the
same blocks every step (autocast's bf16 copies of the weights, the gradients, the embedding's 113 MB gradient), so
each step faults in and zeroes fresh pages: 4.6M minor page faults (3.7M more than with this setting, ~0.8 GB a step)
and 25 s of system time in a 64 s fine-tuning run on 2 cores. With mmap off and trimming off, freed blocks stay in the process and are reused: the same
peak memory, full fine-tuning 1.47x faster, prompt tuning 1.15x, LoRA unchanged (idle AMD EPYC, three repetitions;
bench/docs/cpu.md, "The host allocator").

Applied once per process by the command line (and each Ray worker), on Linux with glibc only. Left alone when the
user chose an allocator (`LD_PRELOAD` of jemalloc/tcmalloc/mimalloc, `MALLOC_*` or `GLIBC_TUNABLES` malloc settings)
or set `SOFTPROMPT_HOST_MALLOC=default`. A Python caller of `softprompt.training.train` calls it the same way.
"""

from __future__ import annotations

import ctypes
import os
import platform

from softprompt.errors import SoftPromptError

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = -1  # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely"
ENV = "SOFTPROMPT_HOST_MALLOC"
CHOICES = {"retain": "keep freed memory, the default", "default": "leave glibc's allocator as it comes"}
USER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def glibc_linux() -> bool:
    """Whether this process runs glibc's malloc on Linux, the one allocator `mallopt` tunes."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def user_chose_allocator(environ: dict[str, str] | os._Environ = os.environ) -> str | None:
    """Why softprompt must leave the allocator alone, or None: a preloaded allocator, the user's own malloc
    settings, or `SOFTPROMPT_HOST_MALLOC=default`. Any other value of that variable than its two is refused in one
    line (a typo such as `defualt` used to keep freed memory without a word)."""
    value = environ.get(ENV) or "retain"  # set but empty: as unset
    if value not in CHOICES:
        allowed = "; ".join(f"{k} ({v})" for k, v in CHOICES.items())
        raise SoftPromptError(f"{ENV}={value!r} is not a known setting: expected {allowed}, or leave it unset")
    if value == "default":
        return f"{ENV}=default"
    preload = environ.get("LD_PRELOAD", "")
    if any(name in preload for name in USER_ALLOCATORS):
        return f"LD_PRELOAD={preload}"
    mine = sorted(k for k in environ if k.startswith("MALLOC_") and k.endswith("_"))
    if mine:
        return ", ".join(mine)
    if "malloc" in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    return None


def keep_freed_host_memory() -> bool:
    """Turn glibc's mmap'ed blocks and heap trimming off for this process (calling it again changes nothing); True
    if this process now keeps freed memory, False where it does not apply (not glibc, or the user chose an
    allocator). An unknown `SOFTPROMPT_HOST_MALLOC` value is refused on every platform."""
    if user_chose_allocator() or not glibc_linux():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success; set trimming off first so that nothing is handed back in between
    return bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)) and bool(libc.mallopt(M_MMAP_MAX, 0))
