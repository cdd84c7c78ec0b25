import math
from typing import Literal

import pytest

from metareg.config import build_config, config, describe, load_toml, param, parse_value
from metareg.errors import ConfigError


@config
class Cfg:
    lr: float = param(0.1, "a rate", gt=0)
    steps: int = param(1, "steps", ge=1)
    mode: Literal["a", "b"] = param("a", "mode")
    flag: bool = param(False, "flag")
    sizes: tuple[int, ...] = param((1, 2), "sizes")


def test_defaults_and_describe():
    c = Cfg()
    assert (c.lr, c.steps, c.mode, c.flag, c.sizes) == (0.1, 1, "a", False, (1, 2))
    info = {p.name: p for p in describe(Cfg)}
    assert info["lr"].type == "float" and info["lr"].doc == "a rate"
    assert info["mode"].type == "'a' | 'b'"


def test_frozen_and_keyword_only():
    c = Cfg()
    with pytest.raises(Exception):
        c.lr = 1.0
    with pytest.raises(TypeError):
        Cfg(0.1)  # noqa


@pytest.mark.parametrize("kw,needle", [
    ({"lr": 0}, "lr must be greater than 0"),
    ({"steps": 0}, "steps must be at least 1"),
    ({"steps": -3}, "steps must be at least 1"),
    ({"steps": 1.5}, "steps must be an integer"),
    ({"steps": True}, "steps must be an integer"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"lr": math.inf}, "lr must be finite"),
    ({"mode": "c"}, "mode must be one of 'a', 'b'"),
    ({"flag": 1}, "flag must be true or false"),
    ({"sizes": 3}, "sizes must be a list"),
])
def test_bad_values_are_config_errors(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config(Cfg, kw)


def test_int_to_float_and_list_to_tuple():
    c = build_config(Cfg, {"lr": 1, "sizes": [3, 4], "steps": 2.0})
    assert c.lr == 1.0 and isinstance(c.lr, float) and c.sizes == (3, 4) and c.steps == 2


def test_unknown_key_lists_valid_ones_and_suggests():
    with pytest.raises(ConfigError) as e:
        build_config(Cfg, {"stpes": 3})
    msg = str(e.value)
    assert "'stpes'" in msg and "Did you mean 'steps'" in msg and "lr, steps, mode, flag, sizes" in msg


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value("pcgrad") == "pcgrad" and parse_value('"x y"') == "x y"


def test_load_toml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("x = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)
    with pytest.raises(ConfigError, match="is a directory"):
        load_toml(tmp_path)
    good = tmp_path / "good.toml"
    good.write_text("steps = 3\n[benchmark]\nshots = 5\n")
    assert load_toml(good) == {"steps": 3, "benchmark": {"shots": 5}}


def test_mutable_default_rejected():
    with pytest.raises(TypeError):
        param([1], "x")
