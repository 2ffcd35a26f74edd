"""Image folders: real MNIST PNGs and generated RGB images, decoded, cached and searched end to end."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.data.dataset import load_dataset
from cnnsearch.data.folder import load_folder
from cnnsearch.errors import CnnSearchError
from tests.images import first_per_class, write_folder

# --pruner none: one epoch on a few hundred images may end a fold at chance, and these tests need the trial to finish.
SEARCH = ["-n", "1", "--epochs", "1", "--folds", "2", "--threads", "1", "--pruner", "none"]


def settings(name: str = "t") -> dict[str, object]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///studies/{name}.db")
    return dict(study.user_attrs["cnnsearch_settings"])


def folder_order(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images in the folder's order: classes sorted, then file names (written in index order)."""
    order = np.argsort(y, kind="stable")
    return x[order], y[order]


def test_search_on_a_folder_of_real_mnist_pngs(runner: CliRunner, mnist_folder: Path,
                                               mnist: tuple[np.ndarray, np.ndarray]) -> None:
    result = runner.invoke(app, ["run", "--study", "t", "--dataset", f"folder:{mnist_folder}", *SEARCH])
    assert result.exit_code == 0, result.output
    assert f"decoded 300 images from {mnist_folder}" in result.output
    assert "1x28x28, 10 classes; search split 240 images, test split 60 (held out" in result.output
    data = settings()["data"]
    assert data["shape"] == "1x28x28" and data["n_search"] == 240 and data["n_test"] == 60  # type: ignore[index]
    trial = optuna.load_study(study_name="t", storage="sqlite:///studies/t.db").trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and len(trial.user_attrs["fold_scores"]) == 2
    # PNG is lossless: the decoded grayscale pixels are MNIST's own, search and test parts together.
    ds = load_dataset(f"folder:{mnist_folder}", seed=0, test_fraction=0.2)
    x, y = mnist
    keep = first_per_class(y, 30)
    want_x, want_y = folder_order(x[keep], y[keep])
    assert ds.search_index is not None and ds.test_index is not None
    assert np.array_equal(ds.x.numpy()[:, 0], want_x[ds.search_index])
    assert np.array_equal(ds.x_test.numpy()[:, 0], want_x[ds.test_index])
    assert np.array_equal(ds.y_test.numpy(), want_y[ds.test_index])
    assert ds.classes == tuple(str(c) for c in range(10))


def test_second_load_hits_the_cache(mnist_folder: Path, data_cache: Path) -> None:
    first = load_dataset(f"folder:{mnist_folder}", seed=0)
    cached = list((data_cache / "folders").glob("*.pt"))
    assert len(cached) == 1 and first.info.startswith("decoded 300 images")
    stamp = cached[0].stat().st_mtime_ns
    load_dataset.cache_clear()  # a new process would start with an empty per-process cache
    second = load_dataset(f"folder:{mnist_folder}", seed=0)
    assert second.info == f"300 images from the cache {cached[0]}"
    assert cached[0].stat().st_mtime_ns == stamp  # read, not rewritten
    assert np.array_equal(first.x.numpy(), second.x.numpy()) and np.array_equal(first.y.numpy(), second.y.numpy())
    assert first.record() == second.record()
    # A damaged cache file is only a miss: decoded again, rewritten, same images.
    cached[0].write_bytes(b"not a torch file")
    load_dataset.cache_clear()
    third = load_dataset(f"folder:{mnist_folder}", seed=0)
    assert third.info.startswith("decoded 300 images") and third.record() == first.record()


def test_cache_follows_the_folder_content(tmp_path: Path, mnist: tuple[np.ndarray, np.ndarray],
                                          data_cache: Path) -> None:
    x, y = mnist
    keep = first_per_class(y[:200], 4)[:20]
    paths = write_folder(tmp_path / "imgs", x[keep], y[keep])
    root, cache = tmp_path / "imgs", data_cache / "folders"
    a = load_folder(root, image_size=None, strict=False, cache_dir=cache)
    # A touched file is a cache miss (the key holds modification times), but the same pixels: same content.
    os.utime(paths[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    b = load_folder(root, image_size=None, strict=False, cache_dir=cache)
    assert b.info.startswith("decoded") and b.content == a.content
    # Another image changes the content, and the cache key.
    Image.fromarray(x[keep[0]]).save(paths[0].parent / "extra.png")
    c = load_folder(root, image_size=None, strict=False, cache_dir=cache)
    assert c.info.startswith("decoded") and len(c.y) == len(a.y) + 1 and c.content != a.content
    assert len(list(cache.glob("*.pt"))) == 3


def test_truncated_png_is_skipped_with_a_warning_or_refused_with_strict(
        runner: CliRunner, tmp_path: Path, mnist: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = mnist
    keep = first_per_class(y, 12)
    root = tmp_path / "imgs"
    paths = write_folder(root, x[keep], y[keep])
    bad = paths[5]
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated PNG: header intact, pixel data cut off
    rel = bad.relative_to(root)
    strict = runner.invoke(app, ["run", "--study", "s", "--dataset", f"folder:{root}", "--strict", *SEARCH])
    assert strict.exit_code == 2
    assert strict.stderr.startswith(f"Error: --dataset folder:{root}: cannot decode {rel} (")
    assert len(strict.stderr.strip().splitlines()) == 1 and "Traceback" not in strict.output
    assert not Path("studies/s.db").exists()

    result = runner.invoke(app, ["run", "--study", "t", "--dataset", f"folder:{root}", *SEARCH])
    assert result.exit_code == 0, result.output
    assert f"Warning: skipped 1 unreadable image in {root}: {rel}" in result.stderr
    assert "decoded 119 images" in result.output
    # From the cache, the skipped file is still reported, and --strict still refuses it.
    load_dataset.cache_clear()
    again = runner.invoke(app, ["run", "--study", "t", "--dataset", f"folder:{root}", *SEARCH])
    assert again.exit_code == 0 and "119 images from the cache" in again.output
    assert f"skipped 1 unreadable image in {root}: {rel}" in again.stderr
    load_dataset.cache_clear()
    cached_strict = runner.invoke(app, ["run", "--study", "s", "--dataset", f"folder:{root}", "--strict", *SEARCH])
    assert cached_strict.exit_code == 2 and f"cannot decode {rel}" in cached_strict.stderr


def test_mixed_sizes_ask_for_image_size(tmp_path: Path, mnist: tuple[np.ndarray, np.ndarray],
                                        data_cache: Path) -> None:
    x, y = mnist
    keep = first_per_class(y[:100], 2)
    root = tmp_path / "imgs"
    write_folder(root, x[keep], y[keep])
    Image.fromarray(x[0]).resize((32, 30)).save(root / str(y[0]) / "big.png")
    with pytest.raises(CnnSearchError, match=r"2 different sizes, e\.g\. 28x28 .*30x32 .*pass --image-size N"):
        load_folder(root, image_size=None, strict=False, cache_dir=data_cache)
    resized = load_folder(root, image_size=16, strict=False, cache_dir=data_cache)
    assert resized.x.shape == (len(keep) + 1, 1, 16, 16) and resized.x.dtype == np.uint8


def test_folder_errors_name_the_problem(tmp_path: Path, data_cache: Path) -> None:
    with pytest.raises(CnnSearchError, match="no such folder"):
        load_folder(tmp_path / "nope", image_size=None, strict=False, cache_dir=data_cache)
    (tmp_path / "flat").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(CnnSearchError, match="holds no class subfolders"):
        load_folder(tmp_path / "flat", image_size=None, strict=False, cache_dir=data_cache)
    (tmp_path / "flat" / "cat").mkdir()
    (tmp_path / "flat" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(CnnSearchError, match="holds one class subfolder \\('cat'\\); a classifier needs two"):
        load_folder(tmp_path / "flat", image_size=None, strict=False, cache_dir=data_cache)
    (tmp_path / "flat" / "dog").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "flat" / "dog" / "a.png")
    with pytest.raises(CnnSearchError, match="class folder 'cat' holds no images"):
        load_folder(tmp_path / "flat", image_size=None, strict=False, cache_dir=data_cache)


def make_rgb_folder(root: Path, per_class: int = 24, seed: int = 0) -> None:
    """CIFAR-style 32x32 RGB images: three classes told apart by their dominant colour, saved as PNG, JPEG, BMP."""
    rng = np.random.default_rng(seed)
    exts = ["png", "jpg", "bmp"]
    for c, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 120, size=(32, 32, 3), dtype=np.uint8)
            img[..., c] += 120
            Image.fromarray(img).save(root / name / f"{i:03d}.{exts[i % 3]}")


def test_cifar_style_rgb_folder_end_to_end(runner: CliRunner, tmp_path: Path) -> None:
    root = tmp_path / "rgb"
    make_rgb_folder(root)
    result = runner.invoke(app, ["run", "--study", "t", "--dataset", f"folder:{root}", "-n", "2", "--epochs", "2",
                                 "--folds", "2", "--threads", "1", "--augment", "flip+crop", "--layers", "2",
                                 "--width", "8", "--pruner", "none"])
    assert result.exit_code == 0, result.output
    assert "3x32x32, 3 classes; search split 57 images, test split 15" in result.output
    study = optuna.load_study(study_name="t", storage="sqlite:///studies/t.db")
    assert settings()["data"]["shape"] == "3x32x32"  # type: ignore[index]
    assert [t.params["augment"] for t in study.trials] == ["flip+crop", "flip+crop"]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    ds = load_dataset(f"folder:{root}", seed=0)
    assert ds.x.shape[1:] == (3, 32, 32)
    # The dominant channel survives decoding (even through JPEG): each image's mean is highest there.
    channel = {"red": 0, "green": 1, "blue": 2}
    assert ds.classes == ("blue", "green", "red")
    want = torch.tensor([channel[ds.classes[int(label)]] for label in ds.y])
    assert (ds.x.float().mean(dim=(2, 3)).argmax(dim=1) == want).all()


def test_rgb_files_with_equal_channels_count_as_grayscale(tmp_path: Path, data_cache: Path) -> None:
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        (tmp_path / "g" / name).mkdir(parents=True)
        for i in range(3):
            gray = rng.integers(0, 256, size=(10, 12), dtype=np.uint8)
            Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "g" / name / f"{i}.png")
    raw = load_folder(tmp_path / "g", image_size=None, strict=False, cache_dir=data_cache)
    assert raw.x.shape == (6, 1, 10, 12)


def test_unwritable_cache_is_a_warning_not_a_failure(tmp_path: Path, mnist_folder: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    small = tmp_path / "small"
    shutil.copytree(mnist_folder / "0", small / "0")
    shutil.copytree(mnist_folder / "1", small / "1")
    raw = load_folder(small, image_size=None, strict=False, cache_dir=blocker / "folders")
    assert len(raw.y) == 60 and any("could not write the image cache" in w for w in raw.warnings)
