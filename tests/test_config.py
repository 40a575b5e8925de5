from dataclasses import dataclass, field

import pytest

from onp.config import parse_config
from onp.errors import ONPInputError


@dataclass(frozen=True)
class _Demo:
    name: str = "a"
    epochs: int = 3
    rate: float | None = None
    flag: bool = False
    sizes: tuple[int, ...] = (1, 2)
    options: dict = field(default_factory=dict)
    size: float | int = 0.05


def test_defaults_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\nname: from-yaml\nsizes: [4, 5]\n")
    config = parse_config(
        _Demo,
        [
            "--config",
            str(path),
            "--name",
            "flag",
            "--flag",
            "true",
            "--options",
            '{"k": 1}',
            "--rate",
            "0.5",
        ],
    )
    assert config == _Demo(
        name="flag", epochs=5, rate=0.5, flag=True, sizes=(4, 5), options={"k": 1}
    )


def test_unknown_yaml_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\nepohcs: 6\n")
    with pytest.raises(ONPInputError, match="unknown config keys \\['epohcs'\\]"):
        parse_config(_Demo, ["--config", str(path)])


def test_unknown_flag_exits():
    with pytest.raises(SystemExit):
        parse_config(_Demo, ["--nope", "1"])


def test_a_fraction_or_count_field_keeps_counts_as_ints(tmp_path):
    assert parse_config(_Demo, ["--size", "100"]).size == 100
    assert isinstance(parse_config(_Demo, ["--size", "100"]).size, int)
    assert parse_config(_Demo, ["--size", "0.25"]).size == 0.25
    path = tmp_path / "c.yaml"
    path.write_text("size: 300\nrate: 2\n")
    parsed = parse_config(_Demo, ["--config", str(path)])
    assert (parsed.size, type(parsed.size)) == (300, int)
    assert (parsed.rate, type(parsed.rate)) == (2.0, float)


@pytest.mark.parametrize(("text", "message"), [
    ("epochs: three\n", "epochs must be int, found 'three'"),
    ("flag: 1\n", "flag must be bool"),
    ("sizes: 3\n", "sizes must be tuple"),
    ("options: [1]\n", "options must be dict"),
    ("epochs: true\n", "epochs must be int"),
    ("name: [1, 2\n", "not valid YAML"),
])
def test_yaml_of_the_wrong_type_or_shape_is_an_error_naming_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ONPInputError, match=message):
        parse_config(_Demo, ["--config", str(path)])
