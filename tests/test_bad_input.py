"""The bad-input battery: every wrong input gets one clear line, the right exit code, and harms no study.

A reference study with two real trials is made once for this module. Each case runs next to a fresh copy of
it (``studies/ref.db``), mostly aimed at that very study, and then checks that the study holds the same trials,
values, states and settings, that the database passes ``PRAGMA integrity_check`` and still opens in Optuna,
and that no other file was created or changed (damaged databases keep their exact bytes).
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from tests.conftest import TINY

REF = ["run", "--study", "ref", "-n", "3", *TINY]
"""A run that would add a trial to the reference study, were its bad input not caught first."""

BASE = '[run]\nstudy = "ref"\nn_trials = 3\nepochs = 1\nfolds = 2\nmax_samples = 200\n'
"""The same run as a file (six lines); cases append their bad line."""


def junk(_: Path) -> bytes:
    return random.Random(3).randbytes(4096)


def truncated(ref: Path) -> bytes:
    data = ref.read_bytes()
    return data[: len(data) // 2]


def foreign(ref: Path) -> bytes:
    """A healthy SQLite database of some other program."""
    path = ref.parent / "foreign.db"
    if not path.exists():
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        con.execute("INSERT INTO invoices (total) VALUES (9.5)")
        con.commit()
        con.close()
    return path.read_bytes()


@dataclass(frozen=True)
class Case:
    args: list[str]
    code: int  # 2 for bad input, 1 for a failure at run time
    words: list[str]  # all of them in the one "Error:" line
    files: dict[str, str | bytes | Callable[[Path], bytes]] = field(default_factory=dict)
    cwd: str = "."  # relative to the test's folder, which holds studies/ref.db
    usage: bool = False  # Typer's own usage error: its "Usage:" and "Try" lines come before the Error line


CASES: dict[str, Case] = {
    # --- search-space values (checked by config.parse_dim, for options and files alike)
    "lr-low-negative": Case([*REF, "--lr", "-1e-3:1e-2"], 2, ["--lr", "'-1e-3:1e-2'", "low must be > 0"]),
    "lr-fixed-zero": Case([*REF, "--lr", "0"], 2, ["--lr", "0", "values must be > 0"]),
    "low-above-high": Case([*REF, "--dropout", "0.5:0.1"], 2, ["--dropout", "low 0.5 is greater than high 0.1"]),
    "log-range-with-zero": Case([*REF, "--l2", "0:1e-4"], 2, ["--l2", "'0:1e-4'", "log scale", "cannot include 0"]),
    "dropout-one": Case([*REF, "--dropout", "1"], 2, ["--dropout", "1", "< 1"]),
    "dropout-negative": Case([*REF, "--dropout", "-0.1:0.2"], 2, ["--dropout", "-0.1", ">= 0"]),
    "decay-zero": Case([*REF, "--decay", "0:0.9"], 2, ["--decay", "0", "> 0"]),
    "decay-above-one": Case([*REF, "--decay", "0.9:1.5"], 2, ["--decay", "1.5", "<= 1"]),
    "batch-size-zero": Case([*REF, "--batch-size", "0,32"], 2, ["--batch-size", "'0,32'", ">= 1"]),
    "layers-zero": Case([*REF, "--layers", "0:4"], 2, ["--layers", "'0:4'", ">= 1"]),
    "layers-deep-without-opt-in": Case([*REF, "--layers", "2:13"], 2, ["--layers", "13", "<= 12", "--allow-deep"]),
    "width-zero": Case([*REF, "--width", "0"], 2, ["--width", "0", ">= 1"]),
    "unknown-optimizer": Case([*REF, "--optimizer", "adam,rmsprop"], 2, ["--optimizer", "'rmsprop'", "adam, sgd"]),
    "unknown-pooling": Case([*REF, "--pooling", "median"], 2, ["--pooling", "'median'", "max, avg"]),
    "unknown-head": Case([*REF, "--head", "flatten"], 2, ["--head", "'flatten'", "gap, fc"]),
    # --- run settings
    "folds-one": Case([*REF, "--folds", "1"], 2, ["--folds must be at least 2 but got 1"]),
    "folds-above-smallest-class": Case([*REF, "--folds", "50"], 2, ["--folds 50", "smallest class", "between 2"]),
    "epochs-zero": Case([*REF, "--epochs", "0"], 2, ["--epochs must be at least 1 but got 0"]),
    "trials-zero": Case([*REF, "-n", "0"], 2, ["--n-trials must be at least 1 but got 0"]),
    "seed-negative": Case([*REF, "--seed", "-1"], 2, ["--seed must be 0 or more but got -1"]),
    "unknown-pruner": Case([*REF, "--pruner", "asha"], 2, ["--pruner", "'asha'", "'median'"], usage=True),
    "behind-margin-zero": Case([*REF, "--behind-margin", "0"], 2,
                               ["--behind-margin must be a positive number of standard errors (inf: off)", "0.0"]),
    "behind-margin-word": Case([*REF, "--behind-margin", "wide"], 2, ["--behind-margin", "'wide'"], usage=True),
    "cost-weight-negative": Case([*REF, "--cost-weight", "-0.5"], 2,
                                 ["--cost-weight must be a finite number, 0 or more (0: plain TPE)", "-0.5"]),
    "cost-weight-inf": Case([*REF, "--cost-weight", "inf"], 2, ["--cost-weight must be", "inf"]),
    "trials-not-a-number": Case([*REF, "-n", "many"], 2, ["--n-trials", "integer", "'many'"], usage=True),
    "unknown-option": Case([*REF, "--trials", "3"], 2, ["No such option: --trials"], usage=True),
    # --- the configuration file
    "config-missing": Case(["run", "--config", "nope.toml"], 2, ["--config: no such file: nope.toml"]),
    "config-syntax": Case(["run", "--config", "c.toml"], 2, ["c.toml", "not valid TOML", "line 7"],
                          files={"c.toml": BASE + "seed = \n"}),
    "config-not-utf8": Case(["run", "--config", "c.toml"], 2, ["c.toml", "not UTF-8"],
                            files={"c.toml": b"[run]\nstudy = \"\xff\"\n"}),
    "config-typo-run-key": Case(["run", "--config", "c.toml"], 2, ["'run.epoch'", "did you mean 'run.epochs'"],
                                files={"c.toml": BASE.replace("epochs", "epoch")}),
    "config-typo-space-key": Case(["run", "--config", "c.toml"], 2, ["'space.lrr'", "did you mean 'space.lr'"],
                                  files={"c.toml": BASE + '[space]\nlrr = "1e-3:1e-2"\n'}),
    "config-key-outside-its-table": Case(["run", "--config", "c.toml"], 2,
                                         ["'space.momentum'", "did you mean 'space.sgd.momentum'"],
                                         files={"c.toml": BASE + "[space]\nmomentum = 0.9\n"}),
    "config-wrong-type-run": Case(["run", "--config", "c.toml"], 2,
                                  ["run.seed in c.toml", '"zero"', "a string", "expected an integer"],
                                  files={"c.toml": BASE + 'seed = "zero"\n'}),
    "config-wrong-type-space": Case(["run", "--config", "c.toml"], 2,
                                    ["space.batchnorm in c.toml", "1 is an integer", "true, false"],
                                    files={"c.toml": BASE + "[space]\nbatchnorm = 1\n"}),
    "config-bad-space-value": Case(["run", "--config", "c.toml"], 2, ["space.lr in c.toml", "greater than high"],
                                   files={"c.toml": BASE + "[space]\nlr = { low = 0.1, high = 0.01 }\n"}),
    "config-bad-run-value": Case(["run", "--config", "c.toml"], 2, ["run.seed in c.toml", "0 or more", "-1"],
                                 files={"c.toml": BASE + "seed = -1\n"}),
    "config-unknown-pruner": Case(["run", "--config", "c.toml"], 2, ["run.pruner in c.toml", "'asha'", "median"],
                                  files={"c.toml": BASE + 'pruner = "asha"\n'}),
    # --- storage
    "storage-random-bytes": Case(["run", "--study", "x", "--storage", "sqlite:///junk.db", *TINY], 2,
                                 ["--storage", "junk.db", "not an SQLite database"], files={"junk.db": junk}),
    "storage-empty-file": Case(["run", "--study", "x", "--storage", "sqlite:///empty.db", *TINY], 2,
                               ["--storage", "empty.db", "empty file"], files={"empty.db": b""}),
    "storage-truncated-study": Case(["run", "--study", "ref", "--storage", "sqlite:///cut.db", *TINY], 2,
                                    ["--storage", "cut.db", "damaged", "truncated"], files={"cut.db": truncated}),
    "show-truncated-study": Case(["show", "--study", "ref", "--storage", "sqlite:///cut.db"], 2,
                                 ["cut.db", "damaged"], files={"cut.db": truncated}),
    "storage-other-programs-db": Case(["run", "--study", "x", "--storage", "sqlite:///other.db", *TINY], 2,
                                      ["other.db", "some other program", "invoices", "not an Optuna"],
                                      files={"other.db": foreign}),
    "studies-folder-is-a-file": Case(["run", "--study", "new", *TINY], 2, ["studies", "is a file, not a folder"],
                                     files={"sub/studies": "not a folder\n"}, cwd="sub"),
    "storage-under-a-file": Case(["run", "--study", "new", "--storage", "sqlite:///studies/ref.db/new.db", *TINY],
                                 2, ["--storage", "studies/ref.db is a file, not a folder"]),
    "storage-unknown-scheme": Case([*REF, "--storage", "redis://localhost/0"], 2,
                                   ["--storage", "unknown scheme 'redis'", "sqlite:///"]),
    "storage-path-without-scheme": Case([*REF, "--storage", "studies/ref.db"], 2,
                                        ["--storage", "'studies/ref.db'", "sqlite:///FILE.db"]),
    "storage-sqlite-two-slashes": Case([*REF, "--storage", "sqlite://studies/ref.db"], 2,
                                       ["--storage", "not a SQLite URL", "sqlite:///"]),
    "storage-server-unreachable": Case([*REF, "--storage", "postgresql+psycopg://nobody@127.0.0.1:9/none"], 1,
                                       ["--storage", "cannot open", "127.0.0.1"]),
    "show-missing-study": Case(["show", "--study", "nope"], 2, ["'nope'", "studies that exist: ref"]),
    "best-missing-study": Case(["best", "--study", "nope"], 2, ["'nope'", "studies that exist: ref"]),
    "best-missing-study-in-file": Case(["best", "--study", "nope", "--storage", "sqlite:///studies/ref.db"], 2,
                                       ["no study named 'nope'", "studies that exist: ref"]),
    "best-unknown-format": Case(["best", "--study", "ref", "--format", "yaml"], 2, ["--format", "'yaml'"],
                                usage=True),
    "resume-changed-settings": Case(["run", "--study", "ref", "-n", "3", "--epochs", "2", "--folds", "2",
                                     "--max-samples", "200", "--seed", "4"], 2,
                                    ["'ref'", "epochs: stored 1, given 2", "seed: stored 0, given 4"]),
    "resume-changed-space-from-file": Case(["run", "--config", "c.toml"], 2,
                                           ["space.lr: stored '0.0001:0.03', given '0.001:0.01'", "--widen-space"],
                                           files={"c.toml": BASE + '[space]\nlr = "1e-3:1e-2"\n'}),
    "widen-space-that-narrows": Case(["run", "--config", "c.toml", "--widen-space"], 2,
                                     ["--widen-space only widens", "lr"],
                                     files={"c.toml": BASE + '[space]\nlr = "1e-3:1e-2"\n'}),
    # --- data
    "unknown-dataset": Case([*REF, "--dataset", "imagenet"], 2, ["--dataset", "'imagenet'", "digits"]),
    "data-path-missing": Case([*REF, "--dataset", "folder:/no/such/folder"], 2, ["--dataset", "/no/such/folder"]),
    # --- init
    "init-over-an-existing-file": Case(["init"], 2, ["cnnsearch.toml", "already exists", "--force"],
                                       files={"cnnsearch.toml": "# my own settings\n"}),
    "unknown-command": Case(["frobnicate"], 2, ["No such command", "frobnicate"], usage=True),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real study, ``ref``, with two finished trials; built once, copied for each case."""
    db = tmp_path_factory.mktemp("reference") / "ref.db"
    result = CliRunner().invoke(app, ["run", "--study", "ref", "--storage", f"sqlite:///{db}", "-n", "2", *TINY])
    assert result.exit_code == 0, result.output
    return db


def copy_db(source: Path, target: Path) -> None:
    """A consistent copy, whatever is still in the source's WAL file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src, dst = sqlite3.connect(f"file:{source}?mode=ro", uri=True), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def study_state(db: Path) -> tuple[Any, ...]:
    """What must not change: studies, trials (number, state, value, params, attributes) and settings."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        names = [r[0] for r in con.execute("SELECT study_name FROM studies ORDER BY study_id")]
    finally:
        con.close()
    study = optuna.load_study(study_name="ref", storage=f"sqlite:///{db}")  # still opens in Optuna
    trials = [(t.number, t.state.name, t.value, t.params, t.user_attrs) for t in study.get_trials()]
    return names, trials, study.user_attrs


def other_files(root: Path, db: Path) -> dict[str, str]:
    """Every file and folder under ``root`` except the study database, with a hash of each file's bytes."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.name.startswith(db.name):  # ref.db, ref.db-wal, ref.db-shm
            continue
        out[str(path.relative_to(root))] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_battery_is_big_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, runner: CliRunner, in_tmp: Path, reference: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    db = in_tmp / "studies" / "ref.db"
    copy_db(reference, db)
    for rel, content in case.files.items():
        path = in_tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content(reference) if callable(content) else content
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    study_before, files_before = study_state(db), other_files(in_tmp, db)
    monkeypatch.chdir(in_tmp / case.cwd)

    result = runner.invoke(app, case.args)

    assert result.exit_code == case.code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    if case.usage:
        assert lines[0].startswith("Usage: ") and lines[-1] == errors[0], result.stderr
    else:
        assert lines == errors, result.stderr  # exactly one line
        assert result.stdout == ""
    for word in case.words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"
    assert study_state(db) == study_before
    assert other_files(in_tmp, db) == files_before


def test_cases_hit_the_study_they_protect(runner: CliRunner, in_tmp: Path, reference: Path) -> None:
    # The battery proves something only if a run that got past the checks would change the study: the same
    # command without its bad option does add a trial to the copy.
    db = in_tmp / "studies" / "ref.db"
    copy_db(reference, db)
    result = runner.invoke(app, REF)
    assert result.exit_code == 0, result.output
    assert len(study_state(db)[1]) == 3
