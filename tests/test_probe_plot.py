"""The probe's pictures: ``probe --plot`` (the loss curves, their edges and lowest losses) and the probe's edge on
the stability map, with diverged trials marked by kind; on real digits, and on handmade studies."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState
from PIL import Image
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.errors import RUNTIME, CnnSearchError
from cnnsearch.results.plot_data import gather
from cnnsearch.results.probe_plot import plot_probe, probe_figure_size
from cnnsearch.results.stability_plot import plot_stability
from cnnsearch.search.probe import CURVE_DIGITS, CURVE_POINTS, PROBE_ATTR, cap_for, store, stored
from tests.conftest import cli_env

PROBED = ["--probe", "--lr", "1e-3:30", "--optimizer", "sgd", "--batchnorm", "false", "--layers", "2:3",
          "--epochs", "1", "--folds", "2", "--max-samples", "300", "--threads", "1", "--pruner", "none",
          "--seed", "0", "-n", "3"]
"""A tiny search with the probe: 2 range tests (2 and 3 layers, SGD without batchnorm), then 3 trials."""


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    """A real study "p" run with ``--probe`` on digits, made once for this module; tests only read it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNSEARCH_WORKERS", "1")
    url = f"sqlite:///{tmp_path_factory.mktemp('probed') / 'p.db'}"
    result = CliRunner().invoke(app, ["run", "--study", "p", "--storage", url, *PROBED])
    mp.undo()
    assert result.exit_code == 0, result.output
    return optuna.load_study(study_name="p", storage=url)


def lines(fig: Figure, prefix: str) -> list[Line2D]:
    return [ln for ln in fig.axes[0].get_lines() if str(ln.get_label()).startswith(prefix)]


def xy(line: Line2D) -> tuple[list[float], list[float]]:
    return [float(v) for v in np.asarray(line.get_xdata())], [float(v) for v in np.asarray(line.get_ydata())]


def handmade_study(tmp: Path, kinds: dict[int, str | None]) -> optuna.Study:
    """Two completed trials and one diverged trial per entry of ``kinds`` (trial number -> ``diverged_kind``, None
    for a diverged trial that recorded none), as a search writes them."""
    study = optuna.create_study(study_name="h", storage=f"sqlite:///{tmp / 'h.db'}", direction="maximize")
    dists = {"lr": FloatDistribution(1e-4, 10, log=True), "layers": IntDistribution(2, 6)}
    for i in range(2 + len(kinds)):
        params = {"lr": 10 ** (-3 + i * 0.7), "layers": 2 + i % 5}
        if i < 2:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.8 + i / 100,
                                                      user_attrs={"fold_scores": [0.8, 0.8]}))
            continue
        kind = kinds[i]
        attrs = {"diverged": True, "diverged_lr": params["lr"], **({"diverged_kind": kind} if kind else {})}
        study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params=params, distributions=dists,
                                                  user_attrs=attrs, intermediate_values={0: 0.0}))
    return study


def test_probe_plot_writes_a_png_of_the_curves(runner: CliRunner, in_tmp: Path) -> None:
    result = runner.invoke(app, ["probe", "--optimizer", "sgd", "--batchnorm", "false,true", "--layers", "2",
                                 "--lr", "1e-3:10", "--threads", "1", "--max-samples", "300",
                                 "--plot", "pics/probe.png"])
    assert result.exit_code == 0, result.output
    assert "Wrote pics/probe.png" in result.stdout
    path = in_tmp / "pics" / "probe.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        width, height = probe_figure_size(2)
        assert img.size == (round(width * 100), round(height * 100))  # 100 dpi
        colours = img.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 50  # a drawing, not one flat colour
    assert sorted(p.name for p in path.parent.iterdir()) == ["probe.png"]  # no temporary file left


def test_the_probe_figure_marks_each_edge_and_lowest_loss(probed: optuna.Study) -> None:
    found = stored(probed)
    assert found is not None and [p.layers for p in found] == [2, 3]
    fig = plot_probe(found)
    assert [xy(ln)[0] for ln in fig.axes[0].get_lines() if ln.get_marker() == "o"] == [[p.best_lr] for p in found]
    assert [xy(ln)[0] for ln in fig.axes[0].get_lines() if ln.get_marker() == "x"] == \
        [[p.explode_lr] for p in found if p.explode_lr is not None]
    for p in found:
        (curve,) = lines(fig, f"{p.layers} layers, sgd, no batchnorm: ")
        assert xy(curve) == (p.lrs, p.losses)
        edge = "no edge" if p.explode_lr is None else f"explodes at {p.explode_lr:.3g} ({p.explode_kind})"
        assert str(curve.get_label()).endswith(edge)
    assert fig.axes[0].get_xscale() == "log"


def test_the_stored_curves_are_small_and_rounded(probed: optuna.Study) -> None:
    raw = probed.user_attrs[PROBE_ATTR]
    for r in raw:
        assert 2 <= len(r["lrs"]) == len(r["losses"]) <= CURVE_POINTS
        assert all(float(f"{v:.{CURVE_DIGITS}g}") == v for v in r["lrs"] + r["losses"])
        assert r["lrs"][0] == 1e-3 and r["lrs"] == sorted(r["lrs"])  # the sweep starts at the space's lowest rate
        assert len(json.dumps(r)) < 4000


def test_the_stability_map_draws_the_probes_edge_and_cap(probed: optuna.Study) -> None:
    data = gather(probed)
    found = data.probe
    assert found is not None and found == stored(probed)
    edge = sorted((p.layers, p.explode_lr) for p in found if p.explode_lr is not None)
    assert edge, "no range test blew up within the sweep: the test would prove nothing"
    fig = plot_stability(data)
    (line,) = lines(fig, "probe: explodes above")
    assert line.get_label() == "probe: explodes above"  # one combination: no suffix
    assert xy(line) == ([lr for _, lr in edge], [float(n) for n, _ in edge])
    (cap,) = lines(fig, "probe: cap applied")
    assert cap.get_linestyle() == "--"
    steps = [(x, y) for x, y in zip(*xy(cap), strict=True) if math.isfinite(x)]
    for (x, low), (x_again, high) in zip(steps[::2], steps[1::2], strict=True):  # one step per depth, +-0.5
        depth = round(low + 0.5)
        assert (x_again, low, high) == (x, depth - 0.5, depth + 0.5)
        bound = cap_for(found, {"optimizer": "sgd", "batchnorm": False, "layers": depth})
        assert bound is not None and x == bound.cap  # the cap a trial of that depth got
    assert steps, "no depth has a finite cap"


def test_the_report_shows_the_probes_edge_on_its_stability_map(probed: optuna.Study) -> None:
    """The report draws the same stability map: its inline SVG keeps the legend as text."""
    from cnnsearch.results.report import build_report

    html = build_report(probed)
    assert "probe: explodes above" in html and "probe: cap applied" in html


def test_diverged_trials_are_marked_by_kind_and_no_probe_means_no_probe_line(in_tmp: Path) -> None:
    study = handmade_study(in_tmp, {2: "nan", 3: "inf", 4: "explode", 5: None})
    fig = plot_stability(gather(study))
    marks = {str(c.get_label()): np.asarray(c.get_offsets()) for c in fig.axes[0].collections
             if isinstance(c, PathCollection)}
    trials = study.get_trials()
    expected = {"diverged: NaN loss": trials[2], "diverged: infinite loss": trials[3],
                "diverged: loss exploded": trials[4], "diverged": trials[5]}
    assert sorted(k for k in marks if k.startswith("diverged")) == sorted(expected)
    for label, trial in expected.items():
        ((x, y),) = marks[label]  # one point, at the trial's rate and (spread by at most 0.14) its depth
        assert x == trial.params["lr"] and abs(y - trial.params["layers"]) <= 0.14
    shapes = {np.asarray(c.get_paths()[0].vertices).tobytes() for c in fig.axes[0].collections
              if str(c.get_label()) in expected}
    assert len(shapes) == 4  # four different markers
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"diverged: NaN loss", "diverged: infinite loss", "diverged: loss exploded"} <= set(legend)
    assert gather(study).probe is None and not lines(fig, "probe")


def test_each_combination_gets_its_line_and_a_probe_without_curves_still_loads(in_tmp: Path) -> None:
    """A probe stored before the curves were kept has none: the map still draws its edges, --plot refuses."""
    study = handmade_study(in_tmp, {2: "explode"})
    old = [{"layers": n, "optimizer": "sgd", "batchnorm": bn, "best_lr": 0.1, "explode_lr": 2.0 / n,
            "explode_step": 90, "explode_kind": "explode", "seconds": 1.0} for bn in (False, True) for n in (2, 6)]
    study.set_user_attr(PROBE_ATTR, old)
    found = stored(study)
    assert found is not None and all(p.lrs == [] and p.losses == [] for p in found)
    fig = plot_stability(gather(study))
    for label in ("no batchnorm", "batchnorm"):
        (line,) = lines(fig, f"probe: explodes above (sgd, {label})")
        assert xy(line) == ([1.0, 2.0 / 6], [2.0, 6.0])
    with pytest.raises(CnnSearchError) as err:
        plot_probe(found)
    assert err.value.exit_code == RUNTIME
    assert err.value.message == "--plot: no range test kept a step of its loss curve; there is nothing to draw"
    store(study, found)  # stored back: the same records
    assert stored(study) == found


def test_a_failed_plot_write_leaves_the_old_file_whole_and_no_partial_file(in_tmp: Path) -> None:
    target = in_tmp / "probe.png"
    target.write_bytes(b"old picture")
    script = ("import resource\n"
              "from pathlib import Path\n"
              "from cnnsearch.errors import CnnSearchError\n"
              "from cnnsearch.results.probe_plot import write_probe_plot\n"
              "from cnnsearch.search.probe import Probed\n"
              "lrs = [1e-3 * 1.1 ** i for i in range(100)]\n"
              "found = [Probed(2, 'sgd', False, lrs[60], lrs[-1] * 1.1, 100, 'explode', 1.0, lrs,\n"
              "                [2.3 - i / 60 if i < 60 else 1.3 + (i - 60) / 10 for i in range(100)])]\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))\n"
              "try:\n"
              f"    write_probe_plot(found, Path({str(target)!r}))\n"
              "except CnnSearchError as exc:\n"
              "    print(exc.message)\n")
    done = subprocess.run([sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == f"--plot: cannot write {target}: File too large", done.stderr
    assert target.read_bytes() == b"old picture"
    assert sorted(p.name for p in in_tmp.iterdir() if p.name != "data-dir") == ["probe.png"]


def test_plot_refuses_a_folder_and_a_name_not_ending_in_png(runner: CliRunner, in_tmp: Path) -> None:
    (in_tmp / "pics").mkdir()
    folder = runner.invoke(app, ["probe", "--lr", "1e-3:1", "--plot", "pics"])
    assert folder.exit_code == 2 and "is a directory" in folder.stderr
    jpeg = runner.invoke(app, ["probe", "--lr", "1e-3:1", "--plot", "probe.jpg"])
    assert jpeg.exit_code == 2
    assert jpeg.stderr.strip() == "Error: --plot: probe.jpg does not end in .png; the plot is a PNG file, e.g. " \
                                  "--plot probe.png"
    assert sorted(p.name for p in in_tmp.iterdir() if p.name != "data-dir") == ["pics"]
