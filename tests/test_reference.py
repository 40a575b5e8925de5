"""The settings reference page is generated from the configs, and --print-config round-trips."""

from pathlib import Path

import pytest

from onp.config import parse_config
from onp.reference import reference_page
from onp.repair.apply_config import ApplyConfig

PAGE = Path(__file__).parent.parent / "docs" / "config-reference.md"


def test_the_reference_page_is_the_generated_one():
    assert PAGE.read_text() == reference_page(), (
        "docs/config-reference.md is stale: run python -m onp.reference docs/config-reference.md")


def test_every_apply_setting_is_on_the_page():
    text = PAGE.read_text()
    for name in ApplyConfig.__dataclass_fields__:
        assert f"| `{name}` | `--{name.replace('_', '-')}` |" in text


def test_print_config_writes_yaml_that_config_reads_back(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_config(ApplyConfig, ["--sparsity", "0.2", "--group-kinds", "conv",
                                   "--print-config"])
    assert stop.value.code == 0
    path = tmp_path / "apply.yaml"
    path.write_text(capsys.readouterr().out)
    again = parse_config(ApplyConfig, ["--config", str(path)])
    assert again == ApplyConfig(sparsity=0.2, group_kinds=("conv",))
