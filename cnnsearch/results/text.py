"""How numbers read in tables, the verdict and the report: accuracies, parameter values and durations."""

from __future__ import annotations

from typing import Any


def fmt_pct(value: float | None) -> str:
    """0.9951 -> ``99.51%``; None -> ``-``."""
    return "-" if value is None else f"{100 * value:.2f}%"


def fmt_acc(mean: float | None, std: float | None = None) -> str:
    """A CV accuracy with its spread over the folds: ``99.51% ± 0.10``."""
    return fmt_pct(mean) + (f" ± {100 * std:.2f}" if mean is not None and std is not None else "")


def fmt_value(value: Any) -> str:
    """A parameter value: booleans as yes/no, floats to 3 significant digits."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def fmt_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
