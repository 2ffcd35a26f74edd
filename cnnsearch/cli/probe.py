"""``cnnsearch probe``: the learning-rate range test of a search space, without searching."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cnnsearch.cli.options import setting_param, settings_given, space_given, space_params, takes
from cnnsearch.cli.render import console

PROBE_SETTINGS = ("dataset", "data_dir", "download", "image_size", "strict", "test_fraction", "max_samples",
                  "folds", "seed", "explode", "device", "threads")


@takes([setting_param(name) for name in PROBE_SETTINGS], space_params())
def probe(
    config_file: Annotated[Path | None, typer.Option(
        "--config", "-c", dir_okay=False, help="Read the data settings and the space from this TOML file.")] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", dir_okay=False, help="Also draw each range test's smoothed loss against the learning rate into "
                                       "this PNG file, with the rate where it blew up and the rate of its lowest "
                                       "loss marked.")] = None,
    **given: Any,
) -> None:
    """Find where training blows up: a learning-rate range test per depth, optimizer and batchnorm of the space."""
    import time

    from cnnsearch.cli.render import print_table, probe_table
    from cnnsearch.config.defaults import PROBE_CAP_SHARE
    from cnnsearch.config.files import load_config
    from cnnsearch.errors import CnnSearchError
    from cnnsearch.runtime.cores import set_threads
    from cnnsearch.search.setup import dataset_for, probe_space
    from cnnsearch.training.device import resolve_device

    if plot is not None and plot.suffix.lower() != ".png":
        raise CnnSearchError(f"--plot: {plot} does not end in .png; the plot is a PNG file, e.g. --plot probe.png")
    config = load_config(config_file, settings_given(given), space_given(given))
    if config.run.threads:
        set_threads(config.run.threads)
    started = time.perf_counter()
    found = probe_space(config, dataset_for(config.run), resolve_device(config.run.device))
    print_table(probe_table(found))
    console.print(f"{len(found)} range tests in {time.perf_counter() - started:.1f} s. `cnnsearch run --probe` "
                  f"keeps trials below {PROBE_CAP_SHARE:g} of each explosion rate.", highlight=False)
    if plot is not None:
        from cnnsearch.results.probe_plot import write_probe_plot

        write_probe_plot(found, plot)
        console.print(f"Wrote {plot}", highlight=False)
