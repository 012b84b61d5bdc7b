"""Checkpoints at the edges, against real files and real processes: integers of any size,
a disk that fills up (a real file size limit), rows crafted into the file with sqlite3,
and a path that is a dangling symbolic link."""

import pytest

from crystallize_core import CheckpointError, Experiment
from crystallize_core.testing import numbers, record


def test_a_dangling_symlink_is_named_in_one_line(tmp_path):
    link, target = tmp_path / "c.sqlite", tmp_path / "gone" / "c.sqlite"
    link.symlink_to(target)
    with pytest.raises(CheckpointError) as caught:
        Experiment(numbers, [record]).run(replicates=2, checkpoint=link)
    message = str(caught.value)
    assert str(link) in message and str(target) in message and "does not exist" in message and "\n" not in message
    assert link.is_symlink() and not target.parent.exists()
    assert not list(tmp_path.glob(".c.sqlite.*")), "a temporary file was left behind"
