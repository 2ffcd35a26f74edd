"""Trials as a table: one row per trial in a pandas DataFrame, written as CSV or JSON.

The columns are a stable, documented contract (see the README, "Reading the results"): scripts that read
the CSV should not break when the search changes. Every value comes from the study in storage (trial
state, params, user attributes), so an export of a running search shows its RUNNING trials too.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cnnsearch.config.space import DIM_BY_NAME, DIMS
from cnnsearch.errors import RUNTIME, CnnSearchError
from cnnsearch.runtime.atomic import write_text

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from cnnsearch.store.rows import TrialRow


Format = Literal["csv", "json"]


FORMATS: tuple[str, ...] = ("csv", "json")


STATUSES: tuple[str, ...] = ("COMPLETE", "PRUNED", "DIVERGED", "FAILED", "RUNNING", "WAITING")
"""What the ``status`` column holds; DIVERGED is an Optuna PRUNED trial with the ``diverged`` attribute."""


HEAD_COLUMNS: tuple[str, ...] = ("number", "status", "cv_mean", "cv_std")


TAIL_COLUMNS: tuple[str, ...] = ("duration_s", "diverged", "diverged_fold", "diverged_epoch", "diverged_lr",
                                 "l2_ratio", "l2_dominates", "n_params", "macs", "latency_ms", "latency_ms_256",
                                 "over_budget", "started", "completed", "best")


PARAM_COLUMNS: tuple[str, ...] = tuple(d.name for d in DIMS)


# pandas extension dtypes: they keep a blank cell blank (NA) without turning an int column into floats.
_KIND_DTYPE = {"float": "Float64", "int": "Int64", "str": "string", "bool": "boolean"}


FIXED_DTYPES: dict[str, str] = {
    "number": "Int64", "status": "string", "cv_mean": "Float64", "cv_std": "Float64",
    "duration_s": "Float64", "diverged": "boolean", "diverged_fold": "Int64", "diverged_epoch": "Int64",
    "diverged_lr": "Float64", "l2_ratio": "Float64", "l2_dominates": "boolean", "n_params": "Int64",
    "macs": "Float64", "latency_ms": "Float64", "latency_ms_256": "Float64", "over_budget": "string",
    "started": "datetime64[us]", "completed": "datetime64[us]", "best": "boolean",
}


def fold_column(fold: int) -> str:
    return f"fold_{fold}"


def columns(folds: int) -> list[str]:
    """The column names, in order, of a study cross-validated over ``folds`` folds."""
    return [*HEAD_COLUMNS, *(fold_column(k) for k in range(folds)), *PARAM_COLUMNS, *TAIL_COLUMNS]


def dtypes(folds: int) -> dict[str, str]:
    """Column name -> pandas dtype; ``pandas.read_csv(..., dtype_backend="numpy_nullable")`` infers the same."""
    out = dict(FIXED_DTYPES)
    out.update({fold_column(k): "Float64" for k in range(folds)})
    out.update({name: _KIND_DTYPE[DIM_BY_NAME[name].kind] for name in PARAM_COLUMNS})
    return {c: out[c] for c in columns(folds)}


def parse_statuses(text: str | None) -> frozenset[str] | None:
    """``"complete,diverged"`` -> ``{"COMPLETE", "DIVERGED"}``; None or empty means every status."""
    if text is None or not text.strip():
        return None
    wanted = {part.strip().upper() for part in text.split(",") if part.strip()}
    unknown = sorted(wanted - set(STATUSES))
    if unknown:
        raise CnnSearchError(
            f"--status: unknown status {unknown[0].lower()!r}; allowed: {', '.join(s.lower() for s in STATUSES)}"
        )
    return frozenset(wanted)


def study_folds(study: optuna.Study) -> int:
    """The study's fold count: from its stored settings, else the most fold scores any trial has."""
    from cnnsearch.store.record import SETTINGS_ATTR

    settings = study.user_attrs.get(SETTINGS_ATTR) or {}
    stored = settings.get("folds")
    seen = max((len(t.user_attrs.get("fold_scores", [])) for t in study.get_trials(deepcopy=False)), default=0)
    return max(int(stored) if stored is not None else 0, seen)


def _record(row: TrialRow, trial: optuna.trial.FrozenTrial, folds: int, best: int | None) -> dict[str, Any]:
    """One CSV row; ``best``: the number of the study's best trial (:func:`cnnsearch.store.rows.best_row`)."""
    a = row.attrs
    rec: dict[str, Any] = {"number": row.number, "status": row.status, "cv_mean": row.cv_mean,
                           "cv_std": a.get("cv_std")}
    for k in range(folds):
        rec[fold_column(k)] = row.fold_scores[k] if k < len(row.fold_scores) else None
    for name in PARAM_COLUMNS:
        rec[name] = row.params.get(name)  # None (a blank cell) where a conditional parameter does not apply
    diverged = bool(a.get("diverged", False))
    ratio = a.get("l2_ratio")
    rec.update({
        "duration_s": row.duration_s,
        "diverged": diverged,
        "diverged_fold": a.get("diverged_fold") if diverged else None,
        "diverged_epoch": a.get("diverged_epoch") if diverged else None,
        "diverged_lr": a.get("diverged_lr") if diverged else None,
        "l2_ratio": ratio,
        # Known only once every fold finished (the objective writes both together).
        "l2_dominates": a.get("l2_dominates") if ratio is not None else None,
        "n_params": a.get("n_params"),
        "macs": a.get("macs"),
        "latency_ms": a.get("latency_ms"),
        "latency_ms_256": a.get("latency_ms_256"),
        # The limit a configuration was over, by its option's name: it never trained.
        "over_budget": budget.get("limit") if isinstance(budget := a.get("over_budget"), dict) else None,
        "started": trial.datetime_start,
        "completed": trial.datetime_complete,
        "best": row.number == best,
    })
    return rec


def trials_frame(study: optuna.Study, *, statuses: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per trial (by number), with the columns of :func:`columns` and the dtypes of :func:`dtypes`.

    Args:
        study: A loaded study; a search may still be writing to it.
        statuses: Keep only rows whose status is one of these (upper case); None keeps all.
    """
    import pandas as pd

    from cnnsearch.store.rows import best_row, row_of

    folds = study_folds(study)
    keep = None if statuses is None else set(statuses)
    trials = study.get_trials(deepcopy=False)
    rows = [row_of(t) for t in trials]
    best = best_row(rows)
    records = [_record(r, t, folds, None if best is None else best.number) for r, t in zip(rows, trials, strict=True)]
    records = [r for r in records if keep is None or r["status"] in keep]
    cols = columns(folds)
    frame = pd.DataFrame.from_records(records, columns=cols)
    # Through object first: astype from an all-None float column to Int64 or boolean is otherwise refused.
    return frame.astype("object").astype(dtypes(folds)).sort_values("number", ignore_index=True)


def default_out(study_name: str, fmt: Format) -> Path:
    return Path(f"{study_name}.{fmt}")


def pick_format(out: Path | None, fmt: str | None) -> Format:
    """The explicit ``--format``, else the suffix of ``--out`` (``.json``), else csv."""
    if fmt is None:
        return "json" if out is not None and out.suffix.lower() == ".json" else "csv"
    if fmt not in FORMATS:
        raise CnnSearchError(f"--format: unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    return "json" if fmt == "json" else "csv"


def _json_value(value: Any) -> Any:
    """A cell as plain JSON: NA and non-finite floats become null, datetimes ISO 8601 text."""
    import pandas as pd

    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _render(frame: pd.DataFrame, fmt: Format) -> str:
    if fmt == "csv":
        return str(frame.to_csv(index=False))
    # Through Python objects rather than DataFrame.to_json, which rounds floats to 15 digits: here every
    # float is written in full, as in the CSV.
    records = [{c: _json_value(v) for c, v in zip(frame.columns, row, strict=True)}
               for row in frame.itertuples(index=False, name=None)]
    return json.dumps(records, indent=2, allow_nan=False) + "\n"


def write_frame(frame: pd.DataFrame, out: Path, fmt: Format) -> None:
    """Write ``frame`` as CSV (blank cells for missing values) or as a JSON list of records; ``-`` is stdout."""
    if str(out) == "-":
        sys.stdout.write(_render(frame, fmt))
        sys.stdout.flush()
        return
    if out.is_dir():
        raise CnnSearchError(f"--out: {out} is a folder; name a file", exit_code=RUNTIME)
    write_text(out, _render(frame, fmt), label="--out")  # a failure leaves an earlier export whole


def export_study(study: optuna.Study, out: Path, fmt: Format, *, statuses: Sequence[str] | None = None) -> int:
    """Write the trials of ``study`` to ``out``; returns the number of rows written."""
    frame = trials_frame(study, statuses=statuses)
    write_frame(frame, out, fmt)
    return len(frame)
