"""Using a saved model: `predict` on images the test writes, `export-model` to ONNX and pt2 with its parity check,
`retrain --seeds` and `--trial`, the README's onnxruntime lines, and the bad inputs, on a tiny real study."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.results.model_export import export_model, parity
from cnnsearch.results.predict import open_saved, probabilities
from cnnsearch.results.saved import dataset_for, evaluate_saved
from tests.conftest import copy_db

ROOT = Path(__file__).resolve().parents[1]
TINY_STUDY = ["-n", "2", "--epochs", "1", "--folds", "2", "--max-samples", "200", "--threads", "1", "--pruner",
              "none", "--layers", "2", "--width", "16"]


@dataclass(frozen=True)
class Tiny:
    db: Path  # studies/digits.db: a real study of 2 trials
    model: Path  # studies/digits/model.pt, retrained from it
    run_output: str


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("tiny")
    mp.chdir(root)
    mp.setenv("CNNSEARCH_WORKERS", "1")
    mp.setenv("COLUMNS", "200")
    try:
        runner = CliRunner()
        run = runner.invoke(app, ["run", "--study", "digits", *TINY_STUDY])
        assert run.exit_code == 0, run.output
        again = runner.invoke(app, ["retrain", "--study", "digits", "--threads", "1"])
        assert again.exit_code == 0, again.output
    finally:
        mp.undo()
    return Tiny(root / "studies" / "digits.db", root / "studies" / "digits" / "model.pt", run.stdout)


def one_error_line(result: object, code: int) -> str:
    """The result's exit code is ``code`` and its stderr one line, 'Error: ...', with no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)  # type: ignore[attr-defined]
    err = result.stderr  # type: ignore[attr-defined]
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    return str(err)


def held_out(tiny: Tiny) -> tuple[torch.Tensor, torch.Tensor]:
    config = open_saved(tiny.model).config
    data = dataset_for(config["settings"])
    return data.x_test, data.y_test


def write_pngs(folder: Path, x: torch.Tensor, y: torch.Tensor, *, rgb: bool) -> None:
    for i, (img, label) in enumerate(zip(x.numpy(), y.tolist(), strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        gray = img[0]
        pil = Image.fromarray(np.stack([gray] * 3, axis=2)) if rgb else Image.fromarray(gray, mode="L")
        pil.save(folder / str(label) / f"{i:03d}.png")


def test_run_ends_with_the_next_commands(tiny: Tiny) -> None:
    assert "cnnsearch retrain --study digits --seeds 3" in tiny.run_output
    assert "cnnsearch predict --model studies/digits/model.pt IMAGES..." in tiny.run_output
    assert "cnnsearch export-model --model studies/digits/model.pt --format onnx" in tiny.run_output


@pytest.mark.parametrize("rgb", [False, True], ids=["grayscale", "rgb"])
def test_predict_on_the_held_out_split_gives_evaluates_accuracy(runner: CliRunner, tiny: Tiny, in_tmp: Path,
                                                                rgb: bool) -> None:
    """Grayscale PNGs and RGB PNGs (three equal channels) of the held-out images, in class subfolders: the same
    probabilities as the model on the tensors, and the accuracy evaluate gives."""
    x, y = held_out(tiny)
    write_pngs(in_tmp / "imgs", x, y, rgb=rgb)
    result = runner.invoke(app, ["predict", "--model", str(tiny.model), "imgs", "--top-k", "2", "--out", "p.json",
                                 "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert result.stderr == f"Wrote {len(y)} predictions to p.json\n"  # no conversion note: as the study read them
    rows = json.loads((in_tmp / "p.json").read_text())
    assert len(rows) == len(y) and all(len(r["top_k"]) == 2 for r in rows)
    saved = open_saved(tiny.model)
    expected = probabilities(saved, x, torch.device("cpu"))
    order = sorted(range(len(y)), key=lambda i: f"imgs/{int(y[i])}/{i:03d}.png")
    for row, i in zip(rows, order, strict=True):
        assert row["path"] == f"imgs/{int(y[i])}/{i:03d}.png" and row["true"] == str(int(y[i]))
        assert row["predicted"] == saved.classes[int(expected[i].argmax())]
        assert row["probability"] == pytest.approx(float(expected[i].max()), abs=1e-6)
    evaluated = evaluate_saved(tiny.model).scores.accuracy
    assert f"Accuracy: {100 * evaluated:.2f}% on the {len(y)} images" in result.stdout
    assert sum(r["predicted"] == r["true"] for r in rows) / len(rows) == evaluated


def test_predict_npz_and_stdout_csv(runner: CliRunner, tiny: Tiny, in_tmp: Path) -> None:
    x, y = held_out(tiny)
    np.savez(in_tmp / "t.npz", x=x.numpy()[:, 0], y=y.numpy())  # (N, H, W), as a study's npz may hold them
    result = runner.invoke(app, ["predict", "-m", str(tiny.model), "npz:t.npz", "--out", "-", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "path,predicted,probability,true,class_1,prob_1,class_2,prob_2,class_3,prob_3"
    assert len(lines) == 1 + len(y) and lines[1].startswith("t.npz[0],")
    accuracy = evaluate_saved(tiny.model).scores.accuracy
    assert f"Accuracy: {100 * accuracy:.2f}%" in result.stderr  # stdout holds nothing but the CSV


def test_predict_converts_colour_and_size_with_a_note(runner: CliRunner, tiny: Tiny, in_tmp: Path) -> None:
    """A colour image of another size for a grayscale 8x8 model, and a file that is no image: converted with a
    note, skipped with a warning that names it."""
    (in_tmp / "new").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(in_tmp / "new" / "colour.png")
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(in_tmp / "new" / "gray.jpg")
    (in_tmp / "new" / "broken.png").write_bytes(b"not a png")
    result = runner.invoke(app, ["predict", "-m", str(tiny.model), "new", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "Warning: skipped 1 unreadable file: new/broken.png (pass --strict to stop instead)",
        "Note: 1 colour image converted to the model's 1 channel (ITU-R 601 luma)",
        "Note: 1 image resized to the model's 8x8 (antialiased)",
    ]
    assert "new/colour.png" in result.stdout and "new/gray.jpg" in result.stdout
    assert "Accuracy" not in result.stdout  # no class subfolders
    strict = runner.invoke(app, ["predict", "-m", str(tiny.model), "new", "--strict"])
    assert one_error_line(strict, 2).startswith("Error: new/broken.png: cannot decode it as an image")


def test_predict_bad_inputs(runner: CliRunner, tiny: Tiny, in_tmp: Path) -> None:
    (in_tmp / "empty").mkdir()
    (in_tmp / "img").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(in_tmp / "img" / "a.png")
    for name in ("no-config", "newer", "tampered"):
        shutil.copytree(tiny.model.parent, in_tmp / name)
    (in_tmp / "no-config" / "config.json").unlink()
    config = json.loads((in_tmp / "newer" / "config.json").read_text())
    (in_tmp / "newer" / "config.json").write_text(json.dumps({**config, "version": 99}))
    blob = bytearray((in_tmp / "tampered" / "model.pt").read_bytes())
    blob[len(blob) // 2:] = b"\0" * (len(blob) - len(blob) // 2)
    (in_tmp / "tampered" / "model.pt").write_bytes(bytes(blob))
    model = str(tiny.model)
    cases = {
        ("-m", "no-config/model.pt", "img"): "Error: --model: the configuration no-config/config.json is missing",
        ("-m", "newer/model.pt", "img"): "Error: --model: newer/config.json has format version 99, written by a "
                                         "newer cnnsearch; this one reads version 1: upgrade cnnsearch",
        ("-m", "tampered/model.pt", "img"): "Error: --model: tampered/model.pt is not a file written by torch.save",
        ("-m", model, "empty"): "Error: empty: the folder holds no images",
        ("-m", model, "missing.png"): "Error: missing.png: no such file or folder",
        ("-m", model, "img", "--top-k", "0"): "Error: --top-k must be between 1 and the model's 10 classes but got 0",
        ("-m", model, "img", "--top-k", "11"): "Error: --top-k must be between 1 and the model's 10 classes but got "
                                               "11",
        ("-m", model, "img", "--out", "p.txt"): "Error: --out: 'p.txt' has no .csv or .json suffix",
    }
    if not torch.cuda.is_available():
        cases[("-m", model, "img", "--device", "cuda")] = "Error: --device cuda: no CUDA device is available here"
    for args, message in cases.items():
        assert one_error_line(runner.invoke(app, ["predict", *args]), 2).startswith(message), args


def test_export_onnx_and_pt2_agree_with_the_model(runner: CliRunner, tiny: Tiny, in_tmp: Path) -> None:
    import onnxruntime as ort

    x, _ = held_out(tiny)
    saved = open_saved(tiny.model)
    expected = probabilities(saved, x, torch.device("cpu")).numpy()
    for kind in ("onnx", "pt2"):
        result = runner.invoke(app, ["export-model", "--model", str(tiny.model), "--format", kind, "--out",
                                     f"m.{kind}"])
        assert result.exit_code == 0, result.output
        found = re.search(r"Checked on (\d+) held-out images .*difference ([0-9.e+-]+) .*agreement ([0-9.]+)%",
                          " ".join(result.stdout.split()))
        assert found and int(found[1]) == len(x) and float(found[2]) <= 1e-4 and found[3] == "100.00", result.stdout
    session = ort.InferenceSession(str(in_tmp / "m.onnx"), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["classes"]) == list(saved.classes)
    extra = {"classes.json": ""}
    program = torch.export.load(str(in_tmp / "m.pt2"), extra_files=extra).module()
    assert json.loads(extra["classes.json"]) == list(saved.classes)
    for n in (1, 5, len(x)):  # the batch is dynamic
        got = session.run(None, {"images": x[:n].numpy()})[0]
        assert got.shape == (n, 10) and np.abs(got - expected[:n]).max() <= 1e-4
        assert np.abs(program(x[:n]).detach().numpy() - expected[:n]).max() <= 1e-4


def test_export_parity_catches_a_different_model(tiny: Tiny, in_tmp: Path) -> None:
    result = export_model(tiny.model, "pt2", in_tmp / "m.pt2")
    assert result.parity.ok and result.parity.n == len(held_out(tiny)[1])
    other = open_saved(tiny.model)
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(torch.randn_like(p))
    check = parity(other, "pt2", in_tmp / "m.pt2", held_out(tiny)[0])
    assert not check.ok and check.max_diff > 1e-4


def test_export_onnx_without_the_extra(runner: CliRunner, tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "onnxscript", None)  # import onnxscript now fails
    result = runner.invoke(app, ["export-model", "--model", str(tiny.model)])
    assert one_error_line(result, 1) == ("Error: --format onnx needs onnxscript, which is not installed; pip install "
                                         "'cnnsearch[export]'\n")


def test_retrain_seeds_keeps_the_median_seed(runner: CliRunner, tiny: Tiny, in_tmp: Path) -> None:
    copy_db(tiny.db, in_tmp / "studies" / "digits.db")
    result = runner.invoke(app, ["retrain", "--seeds", "3", "--threads", "1"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((in_tmp / "studies" / "digits" / "metrics.json").read_text())
    scores = [s["test_accuracy"] for s in metrics["seed_scores"]]
    assert [s["seed"] for s in metrics["seed_scores"]] == [0, 1, 2]
    assert metrics["test_accuracy_mean"] == pytest.approx(statistics.fmean(scores))
    assert metrics["test_accuracy_std"] == pytest.approx(statistics.stdev(scores))
    assert metrics["test_accuracy"] == sorted(scores)[1]  # the median, not the best
    assert scores[metrics["kept_seed"]] == metrics["test_accuracy"]
    assert evaluate_saved(in_tmp / "studies" / "digits" / "model.pt").scores.accuracy == metrics["test_accuracy"]
    assert "Test accuracy over 3 seeds:" in result.stdout and f"seed {metrics['kept_seed']}." in result.stdout


def test_retrain_trial(runner: CliRunner, tiny: Tiny, in_tmp: Path) -> None:
    copy_db(tiny.db, in_tmp / "studies" / "digits.db")
    result = runner.invoke(app, ["retrain", "--trial", "1", "--out", "t1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((in_tmp / "t1" / "config.json").read_text())["trial"] == 1
    missing = runner.invoke(app, ["retrain", "--trial", "7"])
    assert one_error_line(missing, 2) == ("Error: --trial: study 'digits' has no trial 7; its trials are numbered 0 "
                                          "to 1\n")


def test_the_readme_onnx_lines_run(runner: CliRunner, tiny: Tiny, in_tmp: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using the model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1 and len(blocks[0].splitlines()) == 5 and "cnnsearch" not in blocks[0]
    (in_tmp / "studies" / "digits").mkdir(parents=True)
    result = runner.invoke(app, ["export-model", "-m", str(tiny.model), "--out", "studies/digits/model.onnx"])
    assert result.exit_code == 0, result.output
    exec(compile(blocks[0], "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert re.fullmatch(r"\['\d', '\d', '\d', '\d'\]", printed), printed


def test_predict_and_export_take_a_study_with_pick_or_trial(runner: CliRunner, tiny: Tiny, in_tmp: Path) -> None:
    copy_db(tiny.db, in_tmp / "studies" / "digits.db")
    shutil.copytree(tiny.model.parent, in_tmp / "studies" / "digits")
    best = json.loads((in_tmp / "studies" / "digits" / "metrics.json").read_text())["trial"]
    other = 1 - best  # the tiny study has 2 completed trials
    x, y = held_out(tiny)
    np.savez(in_tmp / "t.npz", x=x.numpy()[:5, 0], y=y.numpy()[:5])
    predict = ["predict", "npz:t.npz", "--study", "digits", "--threads", "1"]
    missing = runner.invoke(app, [*predict, "--trial", str(other)])
    assert one_error_line(missing, 1) == (f"Error: --study: trial {other} of 'digits' has no retrained model in "
                                          f"studies/digits; make one with: cnnsearch retrain --study digits --trial "
                                          f"{other}\n")
    retrained = runner.invoke(app, ["retrain", "--trial", str(other), "--threads", "1"])
    assert retrained.exit_code == 0, retrained.output
    saved = Path("studies") / "digits" / f"trial-{other}" / "model.pt"
    assert json.loads((saved.parent / "metrics.json").read_text())["trial"] == other
    assert json.loads((in_tmp / "studies" / "digits" / "metrics.json").read_text())["trial"] == best  # kept
    for chosen, path in ((["--trial", str(other)], saved), (["--pick", "best"], Path("studies/digits/model.pt"))):
        result = runner.invoke(app, [*predict, *chosen])
        assert result.exit_code == 0, result.output
        assert result.stderr.startswith(f"Model: {path}\n"), result.stderr
    exported = runner.invoke(app, ["export-model", "--study", "digits", "--trial", str(other), "-f", "pt2"])
    assert exported.exit_code == 0, exported.output
    assert (saved.parent / "model.pt2").is_file() and not (in_tmp / "studies" / "digits" / "model.pt2").exists()
    both = runner.invoke(app, [*predict, "-m", str(saved)])
    assert one_error_line(both, 2).startswith("Error: --model or --study: give exactly one")
    stray = runner.invoke(app, ["export-model", "-m", str(saved), "--trial", "0"])
    assert one_error_line(stray, 2).startswith("Error: --trial, --pick and --storage choose a model of a --study")
    assert one_error_line(runner.invoke(app, ["predict", "npz:t.npz"]), 2).startswith("Error: --model or --study")
