"""``atomic_checkpoint``: temp name, rename on success, announce only then."""

from __future__ import annotations

import os
import re

import pytest

from kiln_trainer import atomic_checkpoint


def _listing(directory):
    return sorted(os.listdir(directory))


def test_file_checkpoint_success(events_pipe, tmp_path):
    final = tmp_path / "ckpts" / "step-5.json"
    with atomic_checkpoint(final, step=5, loss=0.25) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path / "ckpts")  # next to the final path
        assert not os.path.exists(tmp) and not final.exists()
        with open(tmp, "w") as f:
            f.write('{"w": [1, 2]}')
        assert events_pipe() == []  # nothing announced while writing
    assert final.read_text() == '{"w": [1, 2]}'
    assert _listing(tmp_path / "ckpts") == ["step-5.json"]  # no temp left behind
    assert events_pipe() == [{"type": "checkpoint", "step": 5, "path": str(final), "metrics": {"loss": 0.25}}]


def test_directory_checkpoint_success_and_replace(events_pipe, tmp_path):
    final = tmp_path / "checkpoint-10"
    for version in ("old", "new"):
        with atomic_checkpoint(str(final), step=10) as tmp:
            os.makedirs(os.path.join(tmp, "sub"))
            with open(os.path.join(tmp, "model.bin"), "w") as f:
                f.write(version)
            with open(os.path.join(tmp, "sub", "state.json"), "w") as f:
                f.write("{}")
    assert (final / "model.bin").read_text() == "new"
    assert (final / "sub" / "state.json").exists()
    assert _listing(tmp_path) == ["checkpoint-10"]
    assert [e["path"] for e in events_pipe()] == [str(final), str(final)]


def test_file_replaces_older_file(events_pipe, tmp_path):
    final = tmp_path / "latest.ckpt"
    final.write_text("old")
    with atomic_checkpoint(final, step=2) as tmp:
        with open(tmp, "w") as f:
            f.write("new")
    assert final.read_text() == "new" and _listing(tmp_path) == ["latest.ckpt"]
    assert len(events_pipe()) == 1


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_failure_leaves_nothing_and_announces_nothing(events_pipe, tmp_path, kind):
    final = tmp_path / "step-7.ckpt"
    with pytest.raises(KeyError, match="boom"):
        with atomic_checkpoint(final, step=7, loss=1.0) as tmp:
            if kind == "file":
                with open(tmp, "w") as f:
                    f.write("partial")
            else:
                os.makedirs(tmp)
                with open(os.path.join(tmp, "part"), "w") as f:
                    f.write("partial")
            raise KeyError("boom")
    assert not final.exists()
    assert _listing(tmp_path) == []
    assert events_pipe() == []


def test_failure_keeps_the_previous_checkpoint(events_pipe, tmp_path):
    final = tmp_path / "step-1.json"
    final.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_checkpoint(final, step=1) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("disk full")
    assert final.read_text() == "good" and _listing(tmp_path) == ["step-1.json"]
    assert events_pipe() == []


def test_nothing_written_is_an_error(events_pipe, tmp_path):
    with pytest.raises(RuntimeError, match="nothing was written"):
        with atomic_checkpoint(tmp_path / "x.ckpt", step=1):
            pass
    assert _listing(tmp_path) == [] and events_pipe() == []


def test_without_step_nothing_is_announced(events_pipe, tmp_path):
    with atomic_checkpoint(tmp_path / "model.json") as tmp:
        with open(tmp, "w") as f:
            f.write("{}")
    assert (tmp_path / "model.json").read_text() == "{}"
    assert events_pipe() == []


def test_temp_name_keeps_the_suffix_last(events_pipe, tmp_path):
    seen = []
    with atomic_checkpoint(tmp_path / "round-10.json", step=10) as tmp:
        seen.append(os.path.basename(tmp))
        with open(tmp, "w") as f:
            f.write("{}")
    with atomic_checkpoint(tmp_path / "checkpoint-4", step=4) as tmp:  # a directory: no suffix
        seen.append(os.path.basename(tmp))
        os.makedirs(tmp)
    assert re.fullmatch(rf"\.round-10\.tmp-{os.getpid()}-[0-9a-f]{{8}}\.json", seen[0]), seen[0]
    assert re.fullmatch(rf"\.checkpoint-4\.tmp-{os.getpid()}-[0-9a-f]{{8}}", seen[1]), seen[1]
    assert _listing(tmp_path) == ["checkpoint-4", "round-10.json"]


def _save_like_numpy(path, data):
    """np.save's naming rule: ``.npy`` is appended unless the path already ends with it."""
    path = str(path)
    if not path.endswith(".npy"):
        path += ".npy"
    with open(path, "w") as f:
        f.write(data)


@pytest.mark.parametrize("name", ["step-3.npy", "step-3.ckpt", "step-3"])
def test_writer_that_appends_a_suffix(events_pipe, tmp_path, name):
    final = tmp_path / name
    with atomic_checkpoint(final, step=3) as tmp:
        _save_like_numpy(tmp, "weights")
    assert final.read_text() == "weights"
    assert _listing(tmp_path) == [name]
    assert [e["path"] for e in events_pipe()] == [str(final)]


def test_appended_suffix_is_removed_on_failure(events_pipe, tmp_path):
    with pytest.raises(ValueError):
        with atomic_checkpoint(tmp_path / "step-3.ckpt", step=3) as tmp:
            _save_like_numpy(tmp, "half")
            raise ValueError("torn")
    assert _listing(tmp_path) == [] and events_pipe() == []


def test_real_numpy_save_and_load(events_pipe, tmp_path):
    np = pytest.importorskip("numpy")
    for name in ("w-1.npy", "w-2.ckpt"):
        with atomic_checkpoint(tmp_path / name, step=1) as tmp:
            np.save(tmp, np.arange(4))
        assert np.load(tmp_path / name).tolist() == [0, 1, 2, 3]
    assert _listing(tmp_path) == ["w-1.npy", "w-2.ckpt"]
