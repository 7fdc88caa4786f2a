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


def test_readme_option_table_is_the_configs_own():
    """One source for the shared options: the README's table is `SamplerConfig.options_table()` (every field, its
    default and its help), so README, `python -m emdm_sampling --help` and `emdm-eval --help` agree."""
    from emdm_core import typed
    from emdm_sampling import SamplerConfig
    from emdm_sampling.__main__ import build_parser

    text = README.read_text()
    block = text.split("<!-- sampler-options:", 1)[1].split("-->", 1)[1].split("<!-- /sampler-options -->")[0]
    assert block.strip() == SamplerConfig.options_table().strip()
    help_text = " ".join(build_parser().format_help().split())
    for f in typed.fields(SamplerConfig):
        assert f"--{f.name.replace('_', '-')}" in help_text, f.name
        assert " ".join(f.metadata["help"].split())[:40] in help_text, f.name
