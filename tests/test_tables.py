"""Tables that stay readable: in a real 80-column terminal (a pseudo-terminal), in a pipe, and for a 26-class
confusion matrix."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import statistics
import struct
import subprocess
import sys
import termios
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from cnnsearch.cli.render import confusion_table, natural_width, trials_table
from cnnsearch.store.rows import trial_rows

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def many_trials(db: Path, n: int = 12) -> None:
    study = optuna.create_study(study_name="w", storage=f"sqlite:///{db}", direction="maximize")
    dists = {"lr": FloatDistribution(1e-5, 1, log=True), "layers": IntDistribution(1, 8),
             "optimizer": CategoricalDistribution(["adam", "sgd"])}
    for i in range(n):
        scores = [0.9 - 0.01 * i, 0.91 - 0.01 * i]
        state = TrialState.COMPLETE if i % 3 else TrialState.PRUNED
        attrs = {"fold_scores": scores, "cv_std": statistics.pstdev(scores), "macs": 1e6 * (i + 1),
                 "n_params": 1e4 * (i + 1), "latency_ms": 0.1 * (i + 1), "l2_ratio": 0.001}
        if state == TrialState.PRUNED:
            attrs |= {"pruned_at": {"fold": 0, "epoch": 4}, "at_chance": {"fold": 0, "epoch": 4, "accuracy": 0.1}}
        study.add_trial(create_trial(state=state, value=statistics.fmean(scores) if i % 3 else None,
                                     params={"lr": 10 ** -(1 + i / 4), "layers": 1 + i % 8,
                                             "optimizer": "adam" if i % 2 else "sgd"},
                                     distributions=dists, user_attrs=attrs))


def in_terminal(args: list[str], cwd: Path, columns: int = 80) -> str:
    """The output of ``cnnsearch ARGS`` run in a pseudo-terminal ``columns`` wide, without colour codes."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "cnnsearch", *args], cwd=cwd, stdin=follower, stdout=follower,
                            stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    return ANSI.sub("", b"".join(chunks).decode("utf-8").replace("\r\n", "\n"))


def test_show_fits_an_80_column_terminal_and_names_what_it_left_out(tmp_path: Path) -> None:
    (tmp_path / "studies").mkdir()
    many_trials(tmp_path / "studies" / "w.db")
    text = in_terminal(["show", "--study", "w"], tmp_path)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    header = next(line for line in lines if line.lstrip().startswith("#"))
    assert header.split()[:6] == ["#", "status", "CV", "accuracy", "lr", "layers"]
    rows = [line for line in lines if re.match(r"^\s*\d+\s+(COMPLETE|PRUNED)\s", line)]
    assert len(rows) == 12  # one line per trial: nothing wrapped
    assert sum("at chance @ fold 0 epoch 4" in r for r in rows) == 4  # the notes, whole
    caption = " ".join(lines[lines.index(rows[-1]) + 1:]).split()
    assert "not shown at 80 columns:" in " ".join(caption) and "L2/CE" in caption


def test_at_200_columns_every_column_shows(tmp_path: Path) -> None:
    (tmp_path / "studies").mkdir()
    many_trials(tmp_path / "studies" / "w.db")
    lines = in_terminal(["show", "--study", "w"], tmp_path, columns=200).splitlines()
    assert all(len(line) <= 200 for line in lines) and not any("not shown" in line for line in lines)
    header = next(line for line in lines if line.lstrip().startswith("#")).split()
    assert {"MACs", "params", "ms/img", "L2/CE", "notes", "optimizer", "batch_size"} <= set(header)


@pytest.mark.parametrize("into", ["pipe", "file"])
def test_in_a_pipe_or_a_file_every_column_and_every_row_is_one_whole_line(tmp_path: Path, into: str) -> None:
    (tmp_path / "studies").mkdir()
    many_trials(tmp_path / "studies" / "w.db")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    out = tmp_path / "show.txt"
    with out.open("w") as file:
        done = subprocess.run([sys.executable, "-m", "cnnsearch", "show", "--study", "w"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE if into == "pipe" else file, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    assert done.returncode == 0, done.stderr
    text = done.stdout if into == "pipe" else out.read_text(encoding="utf-8")
    lines = text.splitlines()
    rows = [line for line in lines if re.match(r"^\s*\d+\s+(COMPLETE|PRUNED)\s", line)]
    assert len(rows) == 12 and "…" not in text and "not shown" not in text
    header = next(line for line in lines if line.lstrip().startswith("#")).split()
    assert {"MACs", "params", "ms/img", "L2/CE", "notes", "optimizer"} <= set(header)
    assert all(r.split()[-1] == "4" for r in rows if "PRUNED" in r)  # "... at chance @ fold 0 epoch 4"


def test_the_table_leaves_out_the_last_columns_first() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.9, params={"lr": 0.01},
                                 distributions={"lr": FloatDistribution(1e-5, 1, log=True)},
                                 user_attrs={"fold_scores": [0.9, 0.9], "macs": 2e6}))
    rows = trial_rows(study)
    full = trials_table(rows, width=0)
    assert full.caption is None and len(full.columns) == 15
    for width in (60, 80, 100, 120):
        table = trials_table(rows, width=width)
        assert natural_width(table) <= width
        names = [str(c.header) for c in table.columns]
        assert names[:4] == ["#", "status", "CV accuracy", "lr"] and names[-1] == "notes"


def test_a_26_class_confusion_matrix_is_a_list_of_mistakes_even_at_200_columns() -> None:
    classes = [chr(ord("a") + k) for k in range(26)]
    confusion = [[120 if j == k else (7 if (k, j) == (14, 16) else (k + j) % 3) for j in range(26)]
                 for k in range(26)]
    twelve = [[9 if j == k else int(j == k + 1) for j in range(12)] for k in range(12)]
    wide = confusion_table(classes[:12], twelve, width=0)
    assert len(wide.columns) == 13 and wide.box is None  # the matrix, without box lines, where there is room
    narrow = confusion_table(classes[:12], twelve, width=30)
    assert str(narrow.caption) == ("the 12-class matrix is wider than 30 columns; the whole matrix is in metrics.json "
                                   "and cnnsearch report")
    assert len(confusion_table(classes[:12], twelve, width=200).columns) == 13
    narrow = confusion_table(classes, confusion, width=200)
    assert [str(c.header) for c in narrow.columns] == ["true", "predicted", "images", "of the class"]
    assert natural_width(narrow) <= 80
    assert narrow.title == "Commonest mistakes (15 of 435 kinds)"
    cells = [list(c.cells) for c in narrow.columns]
    assert [cells[0][0], cells[1][0], cells[2][0]] == ["o", "q", "7"]  # the commonest mistake first
    assert str(narrow.caption) == ("26 classes are too many to read as a matrix; the whole matrix is in metrics.json "
                                   "and cnnsearch report")
    small = confusion_table(["0", "1"], [[5, 1], [0, 6]], width=80)
    assert len(small.columns) == 3  # a small matrix fits, and stays a matrix


def test_a_full_width_print_leaves_the_console_as_it_was(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """In a pipe the table is printed at its natural width by a console of its own: the shared console's width
    (which follows COLUMNS) is not pinned for the prints after it."""
    from cnnsearch.cli.render import console, print_table

    monkeypatch.delenv("COLUMNS", raising=False)
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.9, params={"lr": 0.01},
                                 distributions={"lr": FloatDistribution(1e-5, 1, log=True)},
                                 user_attrs={"fold_scores": [0.9, 0.9], "notes": "x" * 300}))
    before = console.width
    print_table(trials_table(trial_rows(study)))
    assert console.width == before
    monkeypatch.setenv("COLUMNS", "123")
    assert console.width == 123
    assert capsys.readouterr().out.count("\n") > 3
