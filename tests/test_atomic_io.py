"""Atomic writes: artifacts get the mode the process umask gives new files (a group-shared results
directory stays readable), and figures go through the atomic writer like every other artifact."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch

from softprompt import io as sp_io
from softprompt.model.prompt import PromptInit, SoftPrompt


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    return fig


@pytest.mark.parametrize("mask,expected", [(0o002, 0o664), (0o077, 0o600), (0o022, 0o644)])
def test_artifacts_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert sp_io.current_umask() == mask
    sp_io.write_json(tmp_path / "results.json", {"a": 1})
    sp_io.write_text(tmp_path / "table.csv", "a,b\n")
    SoftPrompt(torch.zeros(2, 4), PromptInit("random")).save(tmp_path / "prompt.safetensors")
    fig = _figure()
    sp_io.write_figure(tmp_path / "figures" / "curve.png", fig)
    for name in ("results.json", "table.csv", "prompt.safetensors", "figures/curve.png"):
        assert _mode(tmp_path / name) == expected, (name, oct(_mode(tmp_path / name)))
    # replacing an existing artifact gives the new file the umask's mode as well
    (tmp_path / "results.json").chmod(0o600)
    sp_io.write_json(tmp_path / "results.json", {"a": 2})
    assert _mode(tmp_path / "results.json") == expected
    assert (tmp_path / "figures" / "curve.png").read_bytes().startswith(b"\x89PNG")


def test_umask_is_read_without_proc(tmp_path, umask, monkeypatch):
    """Where /proc is missing (macOS), the umask is set and restored under a lock: same answer, unchanged."""
    umask(0o027)

    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(sp_io, "open", no_proc, raising=False)
    assert sp_io.current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # still in force
    sp_io.write_text(tmp_path / "x.txt", "x")
    assert _mode(tmp_path / "x.txt") == 0o640


def _fail_mid_write(monkeypatch):
    """Make every savefig write half a file and then fail as a full disk would."""
    from matplotlib.figure import Figure

    def broken(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken)


def test_failed_figure_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "figures" / "f.png"
    sp_io.write_figure(path, _figure())
    before = path.read_bytes()
    _fail_mid_write(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        sp_io.write_figure(path, _figure())
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.png"]  # no temporary left behind


def test_training_curves_figure_is_written_atomically(tmp_path, monkeypatch):
    """The report's training-curves PNG (written in place before) survives a failed rewrite intact."""
    from softprompt.records.results import RunsAndBaselines
    from softprompt.report.html import training_curves

    history = [{"epoch": e, "accuracy": 0.5 + 0.1 * e} for e in range(3)]
    run = {"name": "rte-s0", "task": "rte", "seed": 0, "final": {"accuracy": 0.7}, "history": history}
    results = RunsAndBaselines.from_dict({"runs": [run], "baselines": {}})
    path = training_curves(results, tmp_path)
    assert path == tmp_path / "figures" / "training_curves.png"
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")
    _fail_mid_write(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        training_curves(results, tmp_path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["training_curves.png"]


def test_analysis_figures_survive_a_failed_rewrite(tmp_path, monkeypatch):
    from softprompt.analysis import figures

    path = tmp_path / "fig.png"
    figures._save(_figure(), path)
    before = path.read_bytes()
    _fail_mid_write(monkeypatch)
    import matplotlib.pyplot as plt

    open_before = len(plt.get_fignums())
    with pytest.raises(OSError):
        figures._save(_figure(), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]
    assert len(plt.get_fignums()) == open_before  # the figure is closed even when saving fails
