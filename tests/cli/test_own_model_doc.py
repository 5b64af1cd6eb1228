"""docs/own-model.md runs as written: every python and bash block, in order, in an empty folder.

Blocks fenced as ```python file=NAME``` / ```toml file=NAME``` are written to NAME; other python
blocks run with ``python -c``, bash blocks with ``bash -euo pipefail``, both from that folder with
the ``distree`` command on PATH. The cluster spec's fixed ports are replaced by free ones (the only
change), and any node left running is stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from distree.runtime.cluster import free_ports
from distree.runtime.spec import load_spec

DOC = Path(__file__).resolve().parents[2] / "docs" / "own-model.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)


def blocks(text: str) -> list[tuple[str, dict[str, str], str]]:
    out = []
    for info, body in FENCE.findall(text):
        words = info.split()
        lang = words[0] if words else ""
        attrs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        out.append((lang, attrs, body))
    return out


def test_the_doc_has_the_blocks_the_tutorial_needs():
    b = blocks(DOC.read_text())
    files = {a.get("file") for _, a, _ in b}
    assert {"mynet.py", "cluster.toml"} <= files
    shell = "\n".join(body for lang, _, body in b if lang == "bash")
    for cmd in (
        "distree train --model mynet:vgg8 --model-args",
        "distree calibrate",
        "distree evaluate",
        "distree cluster up",
        "distree infer",
        "distree cluster down",
    ):
        assert cmd in shell, cmd
    assert sum(lang == "python" and not a for lang, a, _ in b) >= 3


def _stop_leftovers(spec_path: Path) -> None:
    if not spec_path.is_file():
        return
    spec = load_spec(spec_path)
    if spec.pid_file.exists():
        for pid in json.loads(spec.pid_file.read_text()).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        spec.pid_file.unlink()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_own_model_tutorial_runs_as_written(tmp_path: Path):
    work = tmp_path / "tutorial"
    work.mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PYTHONPATH", None)  # the tutorial's module is found from the folder it runs in
    ports = iter(free_ports(4))
    ran: list[str] = []
    try:
        for lang, attrs, body in blocks(DOC.read_text()):
            if "file" in attrs:
                if attrs["file"] == "cluster.toml":
                    body = re.sub(r"127\.0\.0\.1:710\d", lambda _: f"127.0.0.1:{next(ports)}", body)
                (work / attrs["file"]).write_text(body)
                continue
            if lang == "python":
                cmd = [sys.executable, "-c", body]
            elif lang == "bash":
                cmd = ["bash", "-euo", "pipefail", "-c", body]
            else:
                continue
            res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, (
                f"block failed:\n{body}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}"
            )
            ran.append(res.stdout)
    finally:
        _stop_leftovers(work / "cluster.toml")
    out = "\n".join(ran)
    assert "exit 1:" in out and "% of its segment" in out  # the head shares printed in section 1
    assert "exit heads cost" in out  # distree train states each head's share
    assert "feature widths per exit" in out and "FLOPs saved" in out
    assert "mynet:vgg8 mynet:vgg8" in out  # the sidecar names the builder
    assert (work / "runs" / "report" / "report.md").is_file()
    assert "stopped" in out
