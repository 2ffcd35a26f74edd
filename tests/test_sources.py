"""NPZ arrays and torchvision datasets: formats, validation messages and the official test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.config.settings import RunSettings
from cnnsearch.data.dataset import load_dataset
from cnnsearch.data.sources import TORCHVISION, expected_files, load_npz
from cnnsearch.errors import CnnSearchError
from tests.images import first_per_class, mnist_data_dir


def save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_npz_layouts_and_dtypes(tmp_path: Path, mnist: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = mnist
    keep = first_per_class(y, 5)
    xs, ys = x[keep], y[keep]
    want = xs[:, None]
    for name, images in {"nhw": xs, "nhwc": xs[..., None], "nchw": xs[:, None]}.items():
        raw = load_npz(save(tmp_path / f"{name}.npz", x=images, y=ys))
        assert raw.x.dtype == np.uint8 and np.array_equal(raw.x, want), name
    unit = load_npz(save(tmp_path / "unit.npz", x=xs.astype(np.float32) / 255.0, y=ys))
    assert np.array_equal(unit.x, want)  # floats in [0, 1] are scaled by 255
    full = load_npz(save(tmp_path / "full.npz", x=xs.astype(np.float64), y=ys))
    assert np.array_equal(full.x, want)  # floats above 1 are read as 0..255
    rgb = load_npz(save(tmp_path / "rgb.npz", x=np.zeros((4, 32, 32, 3), np.uint8), y=np.array(["cat", "dog"] * 2)))
    assert rgb.x.shape == (4, 3, 32, 32) and rgb.classes == ("cat", "dog") and rgb.y.tolist() == [0, 1, 0, 1]
    sparse = load_npz(save(tmp_path / "sparse.npz", x=xs[:4], y=np.array([3, 7, 7, 3])))
    assert sparse.classes == ("3", "7") and sparse.y.tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x": np.zeros((4, 28), np.uint8), "y": np.zeros(4)},
     r"array x has shape \(4, 28\); allowed: \(N, H, W\), \(N, H, W, C\) or \(N, C, H, W\) with C = 1 or 3"),
    ({"x": np.zeros((4, 28, 28, 5), np.uint8), "y": np.zeros(4)}, r"array x has shape \(4, 28, 28, 5\); allowed"),
    ({"x": np.zeros((4, 1, 8, 8, 1), np.uint8), "y": np.zeros(4)}, r"array x has shape \(4, 1, 8, 8, 1\)"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros((4, 1))}, r"array y has shape \(4, 1\); allowed: \(N,\)"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(3)}, "array y has 3 labels but there are 4 images"),
    ({"x": np.zeros((4, 8, 8), np.uint8)}, "no array 'y'; found x; expected x"),
    ({"x": np.zeros((4, 8, 8), bool), "y": np.zeros(4)}, "array x has dtype bool; allowed"),
    ({"x": np.full((4, 8, 8), 300.0), "y": np.zeros(4)}, r"values 300\.\.300; floats must lie in \[0, 1\] or"),
    ({"x": np.full((4, 8, 8), np.nan), "y": np.zeros(4)}, "array x .float64. holds NaN or inf"),
    ({"x": np.full((4, 8, 8), 256, np.int32), "y": np.zeros(4)}, r"values 256\.\.256; integers must lie in 0\.\.255"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.array([0.5, 1, 2, 3])}, "array y has dtype float64; allowed"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(4), "x_test": np.zeros((2, 8, 8), np.uint8)},
     "only one of x_test and y_test"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(4), "x_test": np.zeros((2, 9, 9), np.uint8),
      "y_test": np.zeros(2)}, "x_test images are 1x9x9 but x images are 1x8x8"),
])
def test_npz_validation_names_the_array_and_shape(tmp_path: Path, arrays: dict[str, np.ndarray],
                                                  message: str) -> None:
    with pytest.raises(CnnSearchError, match=message):
        load_npz(save(tmp_path / "bad.npz", **arrays))


def test_npz_errors_are_one_line_with_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    bad = save(tmp_path / "bad.npz", x=np.zeros((10, 28, 28, 7), np.uint8), y=np.zeros(10, np.int64))
    result = runner.invoke(app, ["run", "--study", "t", "--dataset", f"npz:{bad}"])
    assert result.exit_code == 2
    assert result.stderr == (f"Error: --dataset npz:{bad}: array x has shape (10, 28, 28, 7); allowed: (N, H, W), "
                             f"(N, H, W, C) or (N, C, H, W) with C = 1 or 3\n")
    (tmp_path / "not.npz").write_text("text")
    result = runner.invoke(app, ["run", "--study", "t", "--dataset", f"npz:{tmp_path / 'not.npz'}"])
    assert result.exit_code == 2 and "cannot read it as an .npz file" in result.stderr
    result = runner.invoke(app, ["run", "--study", "t", "--dataset", f"npz:{tmp_path / 'missing.npz'}"])
    assert result.exit_code == 2 and result.stderr.endswith("missing.npz: no such file\n")


def test_npz_search_and_official_test_split(runner: CliRunner, tmp_path: Path,
                                            mnist: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = mnist
    train, test = first_per_class(y[:5000], 20), 5000 + first_per_class(y[5000:], 5)
    path = save(tmp_path / "m.npz", x=x[train], y=y[train], x_test=x[test], y_test=y[test])
    result = runner.invoke(app, ["run", "--study", "t", "--dataset", f"npz:{path}", "-n", "1", "--epochs", "1",
                                 "--folds", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "search split 200 images, test split 50 (the official test split" in result.output
    ds = load_dataset(f"npz:{path}", seed=0)
    assert ds.official_test and np.array_equal(ds.x_test.numpy()[:, 0], x[test])
    assert ds.record()["test_split"] == "official"
    # --max-samples shrinks both parts in proportion, stratified.
    small = load_dataset(f"npz:{path}", seed=0, max_samples=100)
    assert (len(small.y), len(small.y_test)) == (80, 20)
    assert np.bincount(small.y.numpy()).tolist() == [8] * 10


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_missing_files_message(runner: CliRunner, tmp_path: Path, name: str) -> None:
    folder, files = expected_files(name, tmp_path)
    result = runner.invoke(app, ["run", "--study", "t", "--dataset", name, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr == (f"Error: --dataset {name}: files missing in {folder}: {', '.join(files)}; pass "
                             f"--download to fetch them there, or --data-dir DIR to use a folder that has them\n")
    assert not list(tmp_path.glob("*.tar.gz")) and not Path("studies/t.db").exists()  # nothing fetched


def test_torchvision_expected_files_follow_torchvision() -> None:
    folder, files = expected_files("mnist", Path("/d"))
    assert folder == Path("/d/MNIST/raw") and "t10k-images-idx3-ubyte" in files and len(files) == 4
    folder, files = expected_files("cifar100", Path("/d"))
    assert folder == Path("/d/cifar-100-python") and files == ["train", "test", "meta"]


def test_torchvision_mnist_layout_is_read(tmp_path: Path) -> None:
    """Offline only MNIST's test files exist; they stand in for the train files too, to exercise the loader."""
    mnist_data_dir(tmp_path)
    ds = load_dataset("mnist", data_dir=str(tmp_path), max_samples=1000)
    assert ds.official_test and ds.shape == (1, 28, 28) and ds.n_classes == 10
    assert (len(ds.y), len(ds.y_test)) == (500, 500)  # the two parts are the same size here
    assert ds.classes[0] == "0 - zero"


def test_data_options_are_checked() -> None:
    with pytest.raises(CnnSearchError, match="--image-size must be at least 4"):
        RunSettings(image_size=2)
    with pytest.raises(CnnSearchError, match=r"unknown dataset 'imagenet'; allowed: digits, mnist, .*folder:PATH"):
        RunSettings(dataset="imagenet")
    with pytest.raises(CnnSearchError, match="'folder:' names no path"):
        RunSettings(dataset="folder:")


def test_image_size_resizes_any_source() -> None:
    ds = load_dataset("digits", image_size=16, max_samples=100)
    assert ds.shape == (1, 16, 16)
