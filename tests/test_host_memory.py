"""softprompt.host_memory: glibc keeps what a step frees, so a block allocated again is not faulted in again; and
the allocator a user chose is left alone. The behaviour is measured in fresh processes (minor page faults of
touching a 64 MiB block a second time), so that this test process's own allocator stays as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from softprompt.host_memory import ENV, glibc_linux, user_chose_allocator

on_glibc = pytest.mark.skipif(not glibc_linux(), reason="mallopt is glibc's (Linux)")

# Allocate, touch and free a 64 MiB block with libc's malloc, then do it again: the page faults of the second touch
# say whether the first block's pages were kept. (64 MiB is above glibc's largest mmap threshold, 32 MiB.)
PROBE = textwrap.dedent(
    """
    import ctypes, json, resource, sys
    from softprompt.host_memory import keep_freed_host_memory
    applied = keep_freed_host_memory() if sys.argv[1] == "retain" else False
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 << 20

    def touch():
        block = libc.malloc(size)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ctypes.memset(block, 1, size)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        libc.free(ctypes.c_void_p(block))
        return faults

    first, second = touch(), touch()
    print(json.dumps({"applied": applied, "first": first, "second": second}))
    """
)


def _probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", ENV)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=clean | env, capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@on_glibc
def test_retained_memory_is_not_faulted_in_again():
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    kept = _probe("retain")
    assert kept["applied"] is True
    assert kept["first"] > pages // 2  # the first touch faults the block in
    assert kept["second"] < pages // 20  # the second reuses the same pages
    default = _probe("default")
    assert default["second"] > pages // 2  # glibc as it comes: munmap'ed on free, faulted in again


@on_glibc
def test_opting_out_leaves_glibc_alone():
    out = _probe("retain", **{ENV: "default"})
    assert out["applied"] is False
    assert out["second"] > (64 << 20) // os.sysconf("SC_PAGE_SIZE") // 2


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({}, None),
        ({ENV: "retain"}, None),
        ({ENV: "default"}, f"{ENV}=default"),
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
        ({"LD_PRELOAD": "libfoo.so"}, None),
        ({"MALLOC_ARENA_MAX": "2"}, None),  # glibc's arena count (no trailing underscore): not mmap or trimming
        ({"MALLOC_MMAP_THRESHOLD_": "1000000", "MALLOC_TRIM_THRESHOLD_": "1"}, "MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "GLIBC_TUNABLES"),
        ({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, None),
    ],
)
def test_a_users_allocator_choice_is_respected(environ, reason):
    assert user_chose_allocator(environ) == reason


@pytest.mark.parametrize("value", ["defualt", "off", "RETAIN", "1"])
def test_an_unknown_setting_is_refused_naming_the_allowed_ones(value, capsys):
    """Any value was accepted (a typo kept freed memory without a word): the command line now refuses it in one line
    naming the variable and its two settings, before any work."""
    from softprompt.cli import main
    from softprompt.errors import SoftPromptError

    with pytest.raises(SoftPromptError) as err:
        user_chose_allocator({ENV: value})
    assert str(err.value) == (
        f"{ENV}={value!r} is not a known setting: expected retain (keep freed memory, the default); default (leave "
        "glibc's allocator as it comes), or leave it unset"
    )
    assert user_chose_allocator({ENV: ""}) is None  # set but empty: as unset
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, value)
        capsys.readouterr()
        assert main(["tasks"]) == 2
    assert capsys.readouterr().err.strip() == f"softprompt: error: {err.value}"
