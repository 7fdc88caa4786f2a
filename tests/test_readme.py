"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_sampler_library_example_runs(tmp_path, capsys, monkeypatch):
    code = _python_blocks()[0].replace("/tmp/emdm-tiny", str(tmp_path / "tiny"))
    assert len(code.strip().splitlines()) <= 10
    exec(compile(code, "README example", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert {line.split()[0] for line in printed} >= {"vanilla", "top_prob", "margin", "entropy", "eags",
                                                    "low_confidence_remask", "remdm"}


def test_custom_strategy_example_registers(tmp_path):
    from emdm_sampling import available_samplers

    exec(compile(_python_blocks()[1], "README strategy example", "exec"), {})
    assert "right_to_left" in available_samplers()


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "test-command" in ci and "<!-- test-command -->" in README.read_text()
