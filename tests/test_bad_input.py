"""The bad-input battery: every wrong input gets one clear line, the right exit code, and harms no study.

A reference study with two real trials is made once for this module. Each case runs next to a fresh copy of
it (``studies/ref.db``), mostly aimed at that very study, and then checks that the study holds the same trials,
values, states and settings, that the database passes ``PRAGMA integrity_check`` and still opens in Optuna,
and that no other file was created or changed (damaged databases keep their exact bytes).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from tests.conftest import TINY, cli_env

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


def sqlite_file(script: str) -> Callable[[Path], bytes]:
    """A healthy SQLite database made by ``script`` (another program's tables, say)."""
    def make(ref: Path) -> bytes:
        path = ref.parent / f"made-{hashlib.sha256(script.encode()).hexdigest()[:12]}.db"
        if not path.exists():
            con = sqlite3.connect(path)
            con.executescript(script)
            con.close()
        return path.read_bytes()
    return make


def optuna_version(revision: str, library: str) -> Callable[[Path], bytes]:
    """The reference study as another Optuna version would have left it: its schema revision and version row."""
    def make(ref: Path) -> bytes:
        path = ref.parent / f"optuna-{revision}.db"
        if not path.exists():
            copy_db(ref, path)
            con = sqlite3.connect(path)
            con.execute("UPDATE alembic_version SET version_num = ?", (revision,))
            con.execute("UPDATE version_info SET library_version = ?", (library,))
            con.commit()
            con.close()
        return path.read_bytes()
    return make


def npz(**arrays: Any) -> Callable[[Path], bytes]:
    def make(_: Path) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        return buf.getvalue()
    return make


def zip_members(**members: bytes) -> Callable[[Path], bytes]:
    """An .npz-named zip whose members are raw bytes, not .npy arrays."""
    def make(_: Path) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        return buf.getvalue()
    return make


def npy(a: Any) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a))
    return buf.getvalue()


def png(_: Path) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = np.random.default_rng(0).integers(0, 255, size=(20, 8, 8), dtype=np.uint8)
"""Twenty 8x8 images for the NPZ cases."""

PARAMS = {"lr": 1e-3, "decay": 0.9, "l2": 0.0, "dropout": 0.1, "batch_size": 32, "layers": 2, "width": 8,
          "growth": 2.0, "pooling": "max", "batchnorm": True, "head": "gap", "optimizer": "adam"}

SAVED = {
    "version": 1, "study": "ref", "trial": 0, "params": PARAMS, "classes": [str(c) for c in range(10)],
    "settings": {"dataset": "digits", "folds": 2, "epochs": 1, "seed": 0, "explode": 100.0, "test_fraction": 0.2,
                 "max_samples": 200, "image_size": None, "precision": "fp32"},
    "input": {"channels": 1, "height": 8, "width": 8},
    "normalisation": {"scale": [0.01], "shift": [-1.0]},
}
"""A config.json as retrain writes it, for a digits model (no data record, so any split is accepted)."""


def saved_config(**changes: Any) -> str:
    """SAVED with ``changes``: a dotted key set to a value, or to None to delete it."""
    config = json.loads(json.dumps(SAVED))
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = config
        for part in parents:
            target = target[part]
        if value is None:
            del target[key]
        else:
            target[key] = value
    return json.dumps(config)


def saved_model(_: Path) -> bytes:
    """Weights of the model SAVED describes, as torch.save writes them."""
    import torch

    from cnnsearch.training.model import build_model
    from cnnsearch.training.params import params_from_dict

    buf = io.BytesIO()
    torch.save(build_model(params_from_dict(PARAMS), 1, 8, 10).state_dict(), buf)
    return buf.getvalue()


EVAL = ["evaluate", "--model", "m/model.pt"]


@dataclass(frozen=True)
class Case:
    args: list[str]
    code: int  # 2 for bad input, 1 for a failure at run time
    words: list[str]  # all of them in the one "Error:" line
    files: dict[str, str | bytes | Callable[[Path], bytes]] = field(default_factory=dict)
    cwd: str = "."  # relative to the test's folder, which holds studies/ref.db
    dirs: tuple[str, ...] = ()  # empty folders to make first (relative to the test's folder)
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
    "seed-negative": Case([*REF, "--seed", "-1"], 2, ["--seed must be 0 or more and at most 4294967295", "got -1"]),
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
    "npz-label-kinds-differ": Case([*REF, "--dataset", "npz:d.npz"], 2,
                                   ["d.npz", "y holds integers but y_test holds strings"],
                                   files={"d.npz": npz(x=IMAGES, y=[0, 1] * 10, x_test=IMAGES[:4],
                                                       y_test=["a", "b", "a", "b"])}),
    "npz-test-class-not-in-training": Case([*REF, "--dataset", "npz:d.npz"], 2,
                                           ["d.npz", "y_test holds label 2", "y never holds"],
                                           files={"d.npz": npz(x=IMAGES, y=[0, 1] * 10, x_test=IMAGES[:4],
                                                               y_test=[0, 1, 2, 1])}),
    "npz-one-class": Case([*REF, "--dataset", "npz:d.npz"], 2,
                          ["npz:d.npz", "holds one class ('7')", "two classes or more"],
                          files={"d.npz": npz(x=IMAGES, y=[7] * 20)}),
    "folder-one-class": Case([*REF, "--dataset", "folder:imgs"], 2,
                             ["folder:imgs", "one class subfolder ('cat')", "two classes or more"],
                             files={"imgs/cat/a.png": png, "imgs/cat/b.png": png}),
    "npz-member-not-an-array": Case([*REF, "--dataset", "npz:d.npz"], 2,
                                    ["d.npz", "member 'x'", "not a NumPy array"],
                                    files={"d.npz": zip_members(x=b"hello", **{"y.npy": npy([0, 1])})}),
    "npz-images-0x0": Case([*REF, "--dataset", "npz:d.npz"], 2, ["d.npz", "0x0 pixels", "at least 1x1"],
                           files={"d.npz": npz(x=np.zeros((20, 0, 0), np.uint8), y=[0, 1] * 10)}),
    "npz-path-is-a-folder": Case([*REF, "--dataset", "npz:d.npz"], 2, ["d.npz", "is a folder", "folder:d.npz"],
                                 dirs=("d.npz",)),
    "class-with-one-image": Case([*REF, "--dataset", "npz:d.npz"], 2, ["class '2' has only 1 image"],
                                 files={"d.npz": npz(x=IMAGES, y=[0, 1] * 9 + [0, 2])}),
    "max-samples-below-classes": Case(["run", "--study", "ref", "-n", "3", "--epochs", "1", "--folds", "2",
                                       "--max-samples", "12"], 2, ["--max-samples 12", "10 classes", "20"]),
    # --- settings that slipped through: NaN, seeds beyond numpy's, names beyond the file system's
    "timeout-nan": Case([*REF, "--timeout", "nan"], 2, ["--timeout must be a positive number", "got nan"]),
    "behind-margin-nan": Case([*REF, "--behind-margin", "nan"], 2, ["--behind-margin", "nan"]),
    "config-timeout-nan": Case(["run", "--config", "c.toml"], 2, ["run.timeout in c.toml", "nan"],
                               files={"c.toml": BASE + "timeout = nan\n"}),
    "seed-2-to-the-32": Case([*REF, "--seed", str(2**32)], 2, ["--seed", "4294967296", "at most 4294967295"]),
    "config-seed-2-to-the-32": Case(["run", "--config", "c.toml"], 2, ["run.seed in c.toml", "4294967296"],
                                    files={"c.toml": BASE + f"seed = {2**32}\n"}),
    "study-name-too-long": Case(["run", "--study", "s" * 300, *TINY], 2, ["--study", "300 bytes", "at most 200"]),
    "show-study-name-too-long": Case(["show", "--study", "s" * 300], 2, ["303 bytes", "at most 244"]),
    # --- storage: another program's database, another Optuna's, URL options, the lock file
    "storage-foreign-trials-table": Case(["run", "--study", "x", "--storage", "sqlite:///other.db", *TINY], 2,
                                         ["other.db", "some other program", "invoices, trials"],
                                         files={"other.db": sqlite_file("CREATE TABLE trials(id INTEGER PRIMARY "
                                                                        "KEY, t TEXT); CREATE TABLE invoices(id)")}),
    "storage-foreign-studies-table": Case(["run", "--study", "x", "--storage", "sqlite:///other.db", *TINY], 2,
                                          ["other.db", "some other program", "(tables: studies)"],
                                          files={"other.db": sqlite_file("CREATE TABLE studies(id)")}),
    "storage-older-optuna": Case([*REF, "--storage", "sqlite:///old.db"], 2,
                                 ["old.db", "made by Optuna 3.0.0 (schema v3.0.0.d)", "optuna storage upgrade"],
                                 files={"old.db": optuna_version("v3.0.0.d", "3.0.0")}),
    "show-older-optuna": Case(["show", "--study", "ref", "--storage", "sqlite:///old.db"], 2,
                              ["old.db", "made by Optuna 3.0.0", "optuna storage upgrade"],
                              files={"old.db": optuna_version("v3.0.0.d", "3.0.0")}),
    "show-newer-optuna": Case(["show", "--study", "ref", "--storage", "sqlite:///new.db"], 2,
                              ["new.db", "made by Optuna 9.0.0 (schema v9.0.0.a)", "newer"],
                              files={"new.db": optuna_version("v9.0.0.a", "9.0.0")}),
    "storage-read-only-query": Case([*REF, "--storage", "sqlite:///studies/ref.db?mode=ro"], 2,
                                    ["--storage", "query string (?mode=ro)"]),
    "show-with-query": Case(["show", "--study", "ref", "--storage", "sqlite:///studies/ref.db?cache=shared"], 2,
                            ["--storage", "query string (?cache=shared)"]),
    "lock-file-is-a-folder": Case(REF, 2, ["lock file studies/ref.db.lock", "is a folder"],
                                  dirs=("studies/ref.db.lock",)),
    # --- evaluate with an edited config.json, or a model.pt that is no torch file
    "evaluate-config-missing-key": Case(EVAL, 2, ["input in m/config.json is missing"],
                                        files={"m/model.pt": saved_model, "m/config.json": saved_config(input=None)}),
    "evaluate-config-wrong-type": Case(EVAL, 2, ["classes in m/config.json is \"0123\"", "a list"],
                                       files={"m/model.pt": saved_model,
                                              "m/config.json": saved_config(classes="0123")}),
    "evaluate-config-negative-layers": Case(EVAL, 2, ["params.layers in m/config.json is -2", "at least 1"],
                                            files={"m/model.pt": saved_model,
                                                   "m/config.json": saved_config(params__layers=-2)}),
    "evaluate-config-folds-one": Case(EVAL, 2, ["settings.folds in m/config.json", "at least 2", "got 1"],
                                      files={"m/model.pt": saved_model,
                                             "m/config.json": saved_config(settings__folds=1)}),
    "evaluate-raw-pickle-model": Case(EVAL, 2, ["m/model.pt", "not a file written by torch.save"],
                                      files={"m/model.pt": pickle.dumps({"w": [1.0, 2.0]}),
                                             "m/config.json": saved_config()}),
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
    own = {db.name + suffix for suffix in ("", "-wal", "-shm", "-journal")}
    for folder, dirs, files in os.walk(root):  # never follows a symlink
        for name in [*dirs, *files]:
            path = Path(folder) / name
            if name in own and path.parent == db.parent:
                continue
            if name.endswith(("-shm", "-wal")) and name[:-4] in files and (name.endswith("-shm") or
                                                                           path.stat().st_size == 0):
                continue  # SQLite's reader of a WAL database makes these beside it; they hold none of its data
            if path.is_symlink():
                kind = f"link to {os.readlink(path)}"
            else:
                kind = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(root))] = kind
    return dict(sorted(out.items()))


def test_battery_is_big_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, runner: CliRunner, in_tmp: Path, reference: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    db = in_tmp / "studies" / "ref.db"
    copy_db(reference, db)
    for rel in case.dirs:
        (in_tmp / rel).mkdir(parents=True)
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


# --- permissions: as root, file modes bind only once CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH are dropped, so
# these cases run `cnnsearch` in a subprocess under setpriv (the command the issue names); elsewhere they need
# a non-root user, for whom the modes bind anyway.
UNPRIVILEGED = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"] \
    if os.geteuid() == 0 else []


def unreadable_class(root: Path) -> None:
    for name in ("a", "b"):
        (root / "imgs" / name).mkdir(parents=True)
        for i in range(10):
            (root / "imgs" / name / f"{i}.png").write_bytes(png(root))
    (root / "imgs" / "b").chmod(0o000)


PERMISSION_CASES: dict[str, tuple[list[str], list[str], Callable[[Path], None]]] = {
    "read-only-study": (REF, ["the study studies/ref.db is read-only", "show, best and export"],
                        lambda root: (root / "studies" / "ref.db").chmod(0o444)),
    "read-only-studies-folder": (["run", "--study", "new", *TINY], ["the folder studies is read-only", "new.db"],
                                 lambda root: (root / "studies").chmod(0o555)),
    "unreadable-class-folder": ([*REF, "--dataset", "folder:imgs"],
                                ["cannot read the class folder 'b'", "Permission denied"], unreadable_class),
}


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="needs setpriv to drop root's "
                    "capabilities")
@pytest.mark.parametrize("name", list(PERMISSION_CASES))
def test_permissions(name: str, in_tmp: Path, reference: Path) -> None:
    args, words, prepare = PERMISSION_CASES[name]
    db = in_tmp / "studies" / "ref.db"
    copy_db(reference, db)
    study_before, bytes_before = study_state(db), db.read_bytes()
    prepare(in_tmp)
    try:
        done = subprocess.run([*UNPRIVILEGED, sys.executable, "-m", "cnnsearch", *args], cwd=in_tmp,
                              env=cli_env(), capture_output=True, text=True, timeout=300)
    finally:
        for path in (in_tmp / "studies", db, in_tmp / "imgs" / "b"):
            if path.exists():
                path.chmod(0o755 if path.is_dir() else 0o644)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert db.read_bytes() == bytes_before and study_state(db) == study_before
    left = {p.name for p in (in_tmp / "studies").iterdir()} - {"ref.db-wal", "ref.db-shm"}  # this test's reads
    assert left == {"ref.db"}  # no lock file, no new study


def test_folder_entries_that_cannot_be_used_are_skipped_with_a_warning(runner: CliRunner, in_tmp: Path) -> None:
    """A broken symlink, a symlink loop and a name that is not UTF-8 each cost one skipped entry, not the run."""
    for name in ("a", "b"):
        (in_tmp / "imgs" / name).mkdir(parents=True)
        for i in range(10):
            (in_tmp / "imgs" / name / f"{i}.png").write_bytes(png(in_tmp))
    (in_tmp / "imgs" / "a" / "x.png").symlink_to(in_tmp / "nowhere.png")  # broken
    (in_tmp / "imgs" / "a" / "loop").symlink_to(in_tmp / "imgs" / "a")  # a folder inside itself
    os.close(os.open(os.path.join(os.fsencode(in_tmp / "imgs" / "b"), b"\xff\xfe.png"), os.O_CREAT | os.O_WRONLY))
    result = runner.invoke(app, ["run", "--study", "f", "--dataset", "folder:imgs", "-n", "1", "--epochs", "1",
                                 "--folds", "2"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warning = next(line for line in result.output.splitlines() if "skipped 3 entries" in line)
    for word in ("a/x.png (a broken symlink)", "a/loop (a symlink loop", "b/\\xff\\xfe.png (its name is not valid "
                 "UTF-8)"):
        assert word in warning, f"{word!r} not in {warning!r}"


def test_evaluate_with_a_damaged_metrics_json_still_scores(runner: CliRunner, in_tmp: Path) -> None:
    """metrics.json is only compared with: a damaged one is a note, not an abort after the scoring."""
    from cnnsearch.results.saved import evaluate_saved

    (in_tmp / "m").mkdir()
    (in_tmp / "m" / "model.pt").write_bytes(saved_model(in_tmp))
    (in_tmp / "m" / "config.json").write_text(saved_config())
    (in_tmp / "m" / "metrics.json").write_text('{"test_accuracy": 0.9')
    result = runner.invoke(app, EVAL)
    assert result.exit_code == 0, result.output
    assert "Test accuracy: " in result.stdout and "Traceback" not in result.output
    notes = evaluate_saved(Path("m/model.pt")).notes
    assert len(notes) == 1 and notes[0].startswith("cannot read the metrics m/metrics.json"), notes
