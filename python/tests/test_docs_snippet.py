"""The "Python in 10 lines" trainer in docs/trainer-protocol.md really works as a Kiln trainer."""

from __future__ import annotations

import json
import re
import signal
import sys

import pytest

from conftest import PYTHON_DIR, REPO_ROOT, kiln_env

DOC = REPO_ROOT / "docs" / "trainer-protocol.md"


def _snippet() -> str:
    match = re.search(r"### Python in 10 lines\n+```python\n(.*?)```", DOC.read_text(), re.S) if DOC.exists() else None
    if not match:
        pytest.skip("section 'Python in 10 lines' not found in docs/trainer-protocol.md")
    return match.group(1)


def test_ten_line_trainer_is_at_most_ten_lines():
    assert len(_snippet().strip().splitlines()) <= 10


def test_ten_line_trainer_runs_stops_and_resumes(spawn, tmp_path):
    script = tmp_path / "ten.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(PYTHON_DIR)!r})\nimport time\n"
                      + _snippet().replace("w -= 0.2", "time.sleep(0.02); w -= 0.2"))
    wd = tmp_path / "job"
    wd.mkdir()
    p = spawn([sys.executable, str(script)], env=kiln_env(wd, params={"steps": 200}), cwd=wd)
    p.wait_for(lambda evs: any(e["type"] == "progress" and e["step"] >= 3 for e in evs))
    p.send(signal.SIGTERM)
    assert p.wait(10) == 0, p.stderr
    events = p.events
    stopped_at = [e for e in events if e["type"] == "progress"][-1]["step"]
    assert stopped_at < 200
    assert events[-1]["type"] == "checkpoint" and events[-1]["step"] == stopped_at
    assert json.loads(open(events[-1]["path"]).read())[1] == stopped_at

    p = spawn([sys.executable, str(script)], env=kiln_env(wd, params={"steps": stopped_at + 5},
                                                          KILN_RESUME_FROM=events[-1]["path"]), cwd=wd)
    assert p.wait(10) == 0, p.stderr
    steps = [e["step"] for e in p.events if e["type"] == "progress"]
    assert steps == list(range(stopped_at + 1, stopped_at + 6))
