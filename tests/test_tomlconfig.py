"""Configuration files: layout, precedence, checking and writing (the library, no CLI)."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnsearch.cli.reference import INIT_BEGIN, INIT_END
from cnnsearch.config.files import load_config
from cnnsearch.config.settings import Config, RunSettings
from cnnsearch.config.space import build_space, parse_dim
from cnnsearch.config.writer import config_toml, init_text, toml_value
from cnnsearch.errors import CnnSearchError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path | None, run: dict[str, object] | None = None, space: dict[str, str] | None = None,
             **kw: bool) -> str:
    with pytest.raises(CnnSearchError) as info:
        load_config(path, run, space, **kw)
    message = info.value.message
    assert "\n" not in message
    return message


def test_init_text_is_the_defaults_and_reads_back_to_them(tmp_path: Path) -> None:
    text = init_text()
    doc = tomllib.loads(text)
    assert set(doc) == {"run", "space"}
    # Every RunSettings field is there: set ones as keys, unset ones (None) as commented-out lines.
    for f in dataclasses.fields(RunSettings):
        assert f.name in doc["run"] or f"# {f.name} = " in text, f.name
    assert doc["space"]["sgd"] == {"momentum": "0.8:0.99"} and doc["space"]["fc"] == {"hidden": [64, 128, 256]}
    assert "momentum" not in doc["space"] and "hidden" not in doc["space"]
    assert doc["space"]["lr"] == "1e-4:3e-2" and doc["space"]["batchnorm"] == [True, False]
    assert load_config(write(tmp_path / "c.toml", text)) == Config()


def test_init_text_comments_every_key() -> None:

    # Run settings take the run command's option help, else the comment in RunSettings' source.
    lines = init_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("# ") and len(lines[i - 1]) > 6, line
    assert "Ranges are sampled on a log scale" in init_text()
    assert '# Applies only when optimizer = "sgd".' in init_text()


def test_file_overrides_defaults_and_options_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", """
[run]
study = "mine"
folds = 4
epochs = 7
pruner = "none"
explode = 50
behind_margin = inf

[space]
lr = "1e-3:1e-1"
batch_size = [16, 32]
batchnorm = true
dropout = { low = 0.1, high = 0.3 }
optimizer = "sgd"

[space.sgd]
momentum = 0.9

[space.fc]
hidden = "32:128"
""")
    config = load_config(path, {"epochs": 2}, {"batch_size": "64"})
    run = config.run
    assert (run.study, run.folds, run.epochs, run.pruner, run.n_trials) == ("mine", 4, 2, "none", 20)
    assert run.explode == 50.0 and isinstance(run.explode, float)
    assert run.behind_margin == math.inf  # TOML's inf: the behind-the-best check off
    space = config.space
    assert space["lr"] == parse_dim("lr", "1e-3:1e-1")
    assert space["batch_size"].fixed == 64  # the option beats the file's [16, 32]
    assert space["batchnorm"].fixed is True
    assert (space["dropout"].low, space["dropout"].high) == (0.1, 0.3)
    assert space["optimizer"].fixed == "sgd" and space["momentum"].fixed == 0.9
    assert (space["hidden"].low, space["hidden"].high) == (32, 128)
    assert space["decay"] == build_space()["decay"]  # not in the file: the default


def test_print_config_text_reads_back_to_the_same_config(tmp_path: Path) -> None:
    config = load_config(None, {"study": "x", "max_samples": 300, "storage": "sqlite:///a.db"},
                         {"lr": "0.00123456789:0.1", "layers": "4", "pooling": "avg,max"})
    text = config_toml(config)
    assert load_config(write(tmp_path / "p.toml", text)) == config


def test_json_file_has_the_same_layout(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", json.dumps({"run": {"folds": 5}, "space": {"sgd": {"momentum": 0.95}}}))
    config = load_config(path)
    assert config.run.folds == 5 and config.space["momentum"].fixed == 0.95


def test_every_run_setting_is_accepted_by_introspection(tmp_path: Path) -> None:
    # A field a later change adds to RunSettings works in [run] with no code in tomlconfig.
    defaults = RunSettings()
    lines = ["[run]"]
    for f in dataclasses.fields(RunSettings):
        value = getattr(defaults, f.name)
        if value is not None:
            lines.append(f"{f.name} = {toml_value(value)}")
    assert load_config(write(tmp_path / "all.toml", "\n".join(lines))).run == defaults


def test_allow_deep_in_the_file_lifts_the_layer_cap(tmp_path: Path) -> None:
    deep = write(tmp_path / "d.toml", '[run]\nallow_deep = true\n[space]\nlayers = "2:16"\n')
    assert load_config(deep).space["layers"].high == 16
    shallow = write(tmp_path / "s.toml", '[space]\nlayers = "2:16"\n')
    assert "--allow-deep" in error_of(shallow)
    assert load_config(shallow, allow_deep=True).space["layers"].high == 16


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[run]\nepoch = 3\n", ["unknown key 'run.epoch'", "did you mean 'run.epochs'"]),
        ("[space]\nlrr = 0.1\n", ["'space.lrr'", "did you mean 'space.lr'"]),
        ("folds = 3\n", ["unknown key 'folds'", "did you mean 'run.folds'"]),
        ("[space]\nmomentum = 0.9\n", ["'space.momentum'", "did you mean 'space.sgd.momentum'"]),
        ("[space.adam]\nbeta = 0.9\n", ["'space.adam'", "allowed here"]),
        ("[spaces]\nlr = 0.1\n", ["'spaces'", "did you mean 'space'"]),
        ("[space.fc]\nhiden = 64\n", ["'space.fc.hiden'", "did you mean 'space.fc.hidden'"]),
        ("[space]\ndropout = { low = 0.1, hi = 0.2 }\n", ["'space.dropout.hi'", "did you mean 'space.dropout.high'"]),
    ],
)
def test_unknown_keys_get_a_suggestion(tmp_path: Path, text: str, words: list[str]) -> None:
    message = error_of(write(tmp_path / "c.toml", text))
    for word in words:
        assert word in message
    assert "c.toml" in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[run]\nfolds = "3"\n', ["run.folds", '"3"', "a string", "expected an integer"]),
        ("[run]\nfolds = 2.5\n", ["run.folds", "2.5", "a float", "an integer"]),
        ("[run]\nseed = true\n", ["run.seed", "true", "a boolean", "an integer"]),
        ("[run]\nallow_deep = 1\n", ["run.allow_deep", "true or false"]),
        ("[run]\npruner = 3\n", ["run.pruner", "3", '"median"']),
        ("[run]\nmax_samples = [1]\n", ["run.max_samples", "an array", "an integer"]),
        ("run = 3\n", ["run", "expected a table"]),
        ("[space]\nbatchnorm = 1\n", ["space.batchnorm", "an integer", "true, false"]),
        ("[space]\nlr = true\n", ["space.lr", "a boolean", "a number"]),
        ('[space]\nbatch_size = ["32"]\n', ["space.batch_size", '["32"]', "array of integers"]),
        ("[space]\npooling = 1\n", ["space.pooling", "a name"]),
        ("[space]\nlr = []\n", ["space.lr", "empty"]),
        ("[space]\nlr = { low = 0.1 }\n", ["space.lr", "high is missing"]),
        ("[space]\noptimizer = { low = 1, high = 2 }\n", ["space.optimizer", "a table"]),
        ("[space]\nsgd = 0.9\n", ["space.sgd", "expected a table"]),
        ("[space]\nlr = 2020-01-01\n", ["space.lr", "date"]),
    ],
)
def test_wrong_types_name_key_value_and_expected(tmp_path: Path, text: str, words: list[str]) -> None:
    message = error_of(write(tmp_path / "c.toml", text))
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[space]\nlr = "0:1"\n', ["space.lr in", "log scale"]),
        ("[space]\nlr = { low = 1, high = 0.1 }\n", ["space.lr", "greater than high"]),
        ("[space]\ndropout = 1\n", ["space.dropout", "< 1"]),
        ("[space.sgd]\nmomentum = [0.9, 1.0]\n", ["space.sgd.momentum", "< 1"]),
        ('[space]\noptimizer = ["adam", "lion"]\n', ["space.optimizer", "'lion'", "adam, sgd"]),
        ("[run]\nfolds = 1\n", ["run.folds in", "must be at least 2 but got 1"]),
        ('[run]\npruner = "asha"\n', ["run.pruner in", "unknown value 'asha'"]),
        ("[run]\nbehind_margin = 0\n", ["run.behind_margin in", "positive number of standard errors", "got 0.0"]),
        ("[run]\nbehind_margin = nan\n", ["run.behind_margin in", "(inf: off)", "got nan"]),
        ("[run]\ncost_weight = -1\n", ["run.cost_weight in", "0 or more (0: plain TPE)", "got -1.0"]),
        ('[run]\nstudy = "a/b"\n', ["run.study in", "'a/b'"]),
    ],
)
def test_file_values_are_checked_by_the_library_under_their_key(tmp_path: Path, text: str,
                                                                  words: list[str]) -> None:
    message = error_of(write(tmp_path / "c.toml", text))
    for word in words:
        assert word in message, message
    assert "--" not in message.split(":")[0]  # named by its key, not by a command-line option


def test_a_bad_value_in_the_file_is_reported_even_when_an_option_overrides_it(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[run]\nfolds = 1\n[space]\nlr = "0:1"\n')
    assert "run.folds" in error_of(path, {"folds": 3}, {"lr": "1e-3"})


def test_option_values_are_named_as_options(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[run]\nfolds = 3\n")
    assert error_of(path, {"folds": 1}).startswith("--folds must be at least 2")
    assert error_of(path, None, {"lr": "0:1"}).startswith("--lr:")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"[run]\nfolds = \n", ["not valid TOML", "line 2"]),
        (b'[run]\nfolds = 3\nfolds = 4\n', ["not valid TOML", "line 3"]),
        (b"[run\n", ["not valid TOML", "line 1"]),
        (b"\xff\xfe[run]\n", ["not UTF-8"]),
    ],
)
def test_syntax_errors_give_the_line(tmp_path: Path, content: bytes, words: list[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    message = error_of(path)
    assert message.startswith(f"--config: {path}")
    for word in words:
        assert word in message


def test_json_syntax_error_gives_the_line(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "c.json", '{"run":\n  {"folds": }\n}'))
    assert "not valid JSON" in message and "line 2" in message


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert "no such file" in error_of(tmp_path / "nope.toml")
    assert "is a folder" in error_of(tmp_path)


toml_strings = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
toml_scalars = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), toml_strings,
                         st.floats(allow_nan=False, allow_infinity=True))


@settings(max_examples=200, deadline=None)
@given(toml_scalars, st.lists(toml_scalars, max_size=4))
def test_toml_values_read_back_unchanged(value: object, items: list[object]) -> None:
    doc = tomllib.loads(f"a = {toml_value(value)}\nb = {toml_value(items)}\n")
    assert doc["a"] == value and type(doc["a"]) is type(value)
    assert doc["b"] == items


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=1e-8, max_value=1.0, allow_nan=False))
def test_a_fixed_float_keeps_every_digit_through_file_and_stored_space(lr: float) -> None:
    dim = parse_dim("lr", toml_value(lr))
    assert dim.fixed == lr
    assert parse_dim("lr", dim.spec()).fixed == lr  # the text stored in the study reads back exactly
    assert not math.isnan(lr)




def test_the_docs_init_example_is_what_init_writes(tmp_path: Path) -> None:

    # The example sits between the init markers in exactly one page (docs/guide.md).
    root = Path(__file__).resolve().parents[1]
    pages = {name: (root / name).read_text(encoding="utf-8") for name in ("README.md", "docs/guide.md")}
    holders = [name for name, text in pages.items() if INIT_BEGIN in text]
    assert len(holders) == 1, f"the init example should be in one page, between the markers; found in {holders}"
    page = holders[0]
    block = pages[page].split(INIT_BEGIN, 1)[1].split(INIT_END, 1)[0]
    hint = f"{page}'s init example is stale: regenerate it with  python -m cnnsearch.cli.reference"
    assert block == init_text(), hint
    assert load_config(write(tmp_path / "example.toml", block)) == Config(), hint
    for f in dataclasses.fields(RunSettings):
        assert f"\n{f.name} = " in block or f"\n# {f.name} = " in block, hint


def test_workers_auto_reads_from_a_file(tmp_path: Path) -> None:
    """The file ``init`` writes says "a number, or auto": both read back."""
    assert load_config(write(tmp_path / "a.toml", '[run]\nworkers = "auto"\n')).run.workers is None
    assert load_config(write(tmp_path / "n.toml", "[run]\nworkers = 2\n")).run.workers == 2
    with pytest.raises(CnnSearchError, match=r'run.workers in .*: "many" is a string; expected an integer or "auto"'):
        load_config(write(tmp_path / "m.toml", '[run]\nworkers = "many"\n'))
