"""`cnnsearch report`: one self-contained HTML page of a real study, every section there or saying why not, the
verdict escaped, nothing loaded from outside, and the page working in a real headless Chromium, its
screenshots not blank."""

from __future__ import annotations

import html
import json
import shutil
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import optuna
import pytest
from typer.testing import CliRunner

from cnnsearch.cli.app import app
from cnnsearch.results.report import FIGURES, build_report
from cnnsearch.results.verdict import verdict
from cnnsearch.store.rows import sort_rows, trial_rows
from tests.conftest import copy_db

ROOT = Path(__file__).resolve().parents[1]

RUN = ["run", "--study", "t", "-n", "3", "--epochs", "2", "--folds", "2", "--max-samples", "200", "--pruner", "none",
       "--threads", "1"]
"""Three trials on digits that all complete (no pruner), in about ten seconds."""

SECTIONS = ("budget", "verdict", "best", "trials", "history", "stability", "pareto", "advice", "importances", "folds",
            "curves", "retrain")
"""Every section of the report, in the order of the page."""


class Page(HTMLParser):
    """Every start tag with its attributes, and the text of each cell of each table with an id, row by row."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.table: str | None = None
        self.cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "table" and dict(attrs).get("id"):
            self.table = dict(attrs)["id"]
            self.tables[self.table or ""] = []
        elif tag == "tr" and self.table:
            self.tables[self.table].append([])
        elif tag in ("td", "th") and self.table:
            self.cell = []

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None and self.table:
            self.tables[self.table][-1].append("".join(self.cell).strip())
            self.cell = None
        elif tag == "table":
            self.table = None

    def ids(self) -> set[str]:
        return {a["id"] or "" for _, a in self.tags if a.get("id")}


def make_study(folder: Path) -> Path:
    """A real 3-trial digits study in ``folder/t.db``, searched through the CLI."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNSEARCH_WORKERS", "1")
    try:
        result = CliRunner().invoke(app, [*RUN, "--storage", f"sqlite:///{folder / 't.db'}"])
    finally:
        mp.undo()
    assert result.exit_code == 0, result.output
    return folder / "t.db"


@pytest.fixture(scope="module")
def study_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study, made once for this file; tests copy it (:func:`copy_db`) rather than write to it."""
    return make_study(tmp_path_factory.mktemp("report-study"))


@pytest.fixture(scope="module")
def retrained(study_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the study, retrained, with its report: the path of the report."""
    db = copy_db(study_db, tmp_path_factory.mktemp("report-retrained") / "t.db")
    runner = CliRunner()
    done = runner.invoke(app, ["retrain", "--study", "t", "--storage", f"sqlite:///{db}", "--threads", "1"])
    assert done.exit_code == 0, done.output
    made = runner.invoke(app, ["report", "--study", "t", "--storage", f"sqlite:///{db}"])
    assert made.exit_code == 0, made.output
    return db.parent / "t" / "report.html"


def load(db: Path) -> optuna.Study:
    return optuna.load_study(study_name="t", storage=f"sqlite:///{db}")


def test_the_report_has_every_section_and_inline_figures(runner: CliRunner, study_db: Path, in_tmp: Path) -> None:
    copy_db(study_db, in_tmp / "studies" / "t.db")
    result = runner.invoke(app, ["report", "--study", "t"])
    assert result.exit_code == 0, result.output
    path = Path("studies/t/report.html")  # next to the SQLite file, beside what a retrain writes
    assert result.stdout == f"Wrote {path} ({path.stat().st_size / 1024:.0f} KiB)\n"
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert set(SECTIONS) <= page.ids()
    assert text.count("<svg") == len(FIGURES) - 1  # importances need 5 completed trials; the study has 3
    assert "Not drawn: needs at least 5 completed trials" in text
    assert "<img" not in text and "xlink:href" not in text
    rows = sort_rows(trial_rows(load(in_tmp / "studies" / "t.db")))
    table = page.tables["trials-table"]
    assert table[0][:4] == ["#", "status", "CV accuracy", "± std"]
    assert [r[0] for r in table[1:]] == [str(r.number) for r in rows]  # best first, as `show` lists them
    assert [r[1] for r in table[1:]] == ["COMPLETE"] * 3
    best = rows[0]
    assert f"Trial <strong>{best.number}</strong>: CV accuracy <strong>{100 * (best.cv_mean or 0):.2f}%" in text
    assert "3 of 3 targeted: 3 complete" in text and "200: 160 searched, 40 held out for the retrain" in text
    budget = next(f for f in verdict(load(in_tmp / "studies" / "t.db")) if f.kind == "budget")
    assert f"<li>{html.escape(budget.text)}</li>" in text  # the verdict that run and show --verdict print
    assert "No retrain yet: `cnnsearch retrain --study t` writes studies/t/metrics.json." in text
    depth = page.tables["evidence-depth"]  # the usual advice, read from the same three trials
    assert depth[0] == ["conv layers", "completed", "mean CV", "best CV"] and sum(int(r[1]) for r in depth[1:]) == 3
    assert text.count('<li class="reading few">Too few trials to say: ') >= 3  # 3 trials: groups of 3 are rare


def test_the_report_loads_nothing_from_outside(retrained: Path) -> None:
    text = retrained.read_text(encoding="utf-8")
    tags = Page(text).tags
    assert not [a for t, a in tags if t in ("link", "img", "iframe", "object", "embed", "base")]
    assert not [a for t, a in tags if t == "script" and "src" in a]
    urls = [v for _, a in tags for k, v in a.items() if k in ("src", "href") and v
            and not v.startswith(("#", "data:"))]
    assert not urls, urls  # every link is to a part of the page, or data inside it (a colour bar's pixels)
    assert "http://" not in text and "https://" not in text and "url(" not in text.replace("url(#", "")
    assert "@import" not in text


def test_verdict_lines_are_escaped_and_none_say_no_findings(study_db: Path) -> None:
    study = load(study_db)
    line = "lr <script>alert(1)</script> & 'x' beats \"y\""
    text = build_report(study, verdict=[line, "second line"])
    assert "<li>lr &lt;script&gt;alert(1)&lt;/script&gt; &amp; &#39;x&#39; beats &#34;y&#34;</li>" in text
    assert "<li>second line</li>" in text and "alert(1)</script>" not in text and "No findings." not in text
    assert "No findings." in build_report(study)


def test_the_retrain_section_has_per_class_accuracy_and_the_confusion_heat_map(retrained: Path) -> None:
    metrics = json.loads((retrained.parent / "metrics.json").read_text())
    text = retrained.read_text(encoding="utf-8")
    page = Page(text)
    assert f"{100 * metrics['test_accuracy']:.2f}% on {metrics['n_test']} held-out images" in text
    confusion = page.tables["confusion"]
    assert confusion[0][1:] == metrics["classes"]
    assert [[int(v) for v in row[1:]] for row in confusion[1:]] == metrics["confusion_matrix"]
    styles = [a["style"] for t, a in page.tags if t == "td" and a.get("style")]
    assert len(styles) == len(metrics["classes"]) ** 2 and all("background: rgba(" in s for s in styles)
    first = metrics["classes"][0]
    acc = metrics["per_class_accuracy"][first]
    assert (f"<tr><td>{first}</td><td class=\"num\">{'-' if acc is None else f'{100 * acc:.2f}%'}</td>"
            f"<td class=\"num\">{metrics['per_class_support'][first]}</td></tr>") in text


def test_one_completed_trial_gets_a_report_that_says_what_is_missing(study_db: Path) -> None:
    real = load(study_db)
    study = optuna.create_study(direction="maximize", study_name="one <b>&")  # a name is text, never markup
    study.add_trial(real.trials[0])
    for key, value in real.user_attrs.items():
        study.set_user_attr(key, value)
    text = build_report(study)
    assert "<b>" not in text and "<title>cnnsearch report: one &lt;b&gt;&amp;</title>" in text
    assert ("None: the smallest trial within noise needs at least 2 completed trials to compare; 1 "
            "completed.") in text
    assert "Not drawn: needs at least 5 completed trials" in text
    assert text.count("<svg") == 5


def test_a_study_whose_trials_are_all_running_gets_a_report_too() -> None:
    study = optuna.create_study(direction="maximize", study_name="busy")
    study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    text = build_report(study)
    assert text.count("Not drawn: no trial has finished yet.") == len(FIGURES)
    assert "1: 1 running" in text and "no trial has finished yet" in text
    assert "No trial has completed yet." in text and "<svg" not in text


def test_a_study_without_trials_is_a_one_line_error(runner: CliRunner, in_tmp: Path) -> None:
    (in_tmp / "studies").mkdir()
    optuna.create_study(study_name="empty", storage="sqlite:///studies/empty.db", direction="maximize")
    result = runner.invoke(app, ["report", "--study", "empty"])
    assert result.exit_code == 1
    assert result.stderr == ("Error: study 'empty' has no trials to report; run `cnnsearch run --study empty` "
                             "first\n")
    assert not (in_tmp / "studies" / "empty").exists()


def test_an_unknown_study_gives_the_error_other_commands_give(runner: CliRunner, study_db: Path) -> None:
    url = f"sqlite:///{study_db}"
    result = runner.invoke(app, ["report", "--study", "nope", "--storage", url])
    show = runner.invoke(app, ["show", "--study", "nope", "--storage", url])
    assert result.exit_code == show.exit_code == 2
    assert result.stderr == show.stderr == f"Error: --study: no study named 'nope' in {url}; studies that exist: t\n"


def test_an_unwritable_out_is_a_one_line_error(runner: CliRunner, study_db: Path, in_tmp: Path) -> None:
    Path("taken").write_text("a file, not a folder")
    result = runner.invoke(app, ["report", "-s", "t", "--storage", f"sqlite:///{study_db}", "--out",
                                 "taken/report.html"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: --out: cannot write taken/report.html: ")
    assert result.stderr.count("\n") == 1 and Path("taken").read_text() == "a file, not a folder"


def test_the_template_ships_as_package_data() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    folder = ROOT / "cnnsearch" / "results"
    assert [p.name for pattern in data["cnnsearch.results"] for p in folder.glob(pattern)] == ["report.html.j2"]
    assert any(r.startswith("Jinja2") for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
               ["dependencies"])


# ------------------------------------------------------------------------------------------ in a browser
def chrome() -> Any:
    """Headless Chromium through chromedriver, both from PATH (.ci/run installs them); skips without them."""
    pytest.importorskip("selenium", reason="selenium is in the test extra: pip install -e '.[test]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("chromium and chromedriver are not on PATH; .ci/run installs them (apt-get install chromium "
                    "chromium-driver)")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900"):
        options.add_argument(arg)
    options.binary_location = browser
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)  # a named driver: no download is tried


def column(browser: Any, col: int) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#trials-table tbody tr")
    return [r.find_elements(By.TAG_NAME, "td")[col].get_attribute("data-sort")
            or r.find_elements(By.TAG_NAME, "td")[col].text for r in rows]


def assert_not_blank(png: bytes, what: str) -> None:
    """A screenshot with something drawn on it: many colours (text is anti-aliased, figures are coloured) and
    grey levels that vary. A blank or single-colour page has one colour and a deviation of 0; the report's text
    alone gives hundreds of colours and about 35."""
    import io

    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=image.width * image.height) or []
    spread = ImageStat.Stat(image.convert("L")).stddev[0]
    assert len(colours) > 50 and spread > 10, f"{what} looks blank: {len(colours)} colours, grey deviation {spread:.1f}"


def test_the_report_works_in_headless_chromium(retrained: Path) -> None:
    from selenium.webdriver.common.by import By

    b = chrome()
    try:
        b.get(retrained.resolve().as_uri())
        severe = [e for e in b.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        b.execute_script("console.error('probe')")
        assert any("probe" in e["message"] for e in b.get_log("browser"))
        assert b.execute_script("return performance.getEntriesByType('resource').length") == 0
        ids = b.execute_script("return Array.from(document.querySelectorAll('section[id]'), s => s.id)")
        assert ids == list(SECTIONS), ids  # every section, the advice included, in order
        assert_not_blank(b.get_screenshot_as_png(), "the top of the page")
        height = b.execute_script("return document.documentElement.scrollHeight")
        b.set_window_size(1200, min(height + 200, 16000))  # the whole page in one screenshot
        assert_not_blank(b.get_screenshot_as_png(), "the whole page")
        advice = b.find_element(By.ID, "advice")
        assert len(advice.find_elements(By.CSS_SELECTOR, "table.evidence")) == 6
        assert_not_blank(advice.screenshot_as_png, "the advice section")
        b.set_window_size(1200, 900)
        pictures = b.find_elements(By.CSS_SELECTOR, "svg, img")
        assert len(pictures) == retrained.read_text(encoding="utf-8").count("<svg") >= 5
        assert all(p.rect["width"] > 100 and p.rect["height"] > 100 for p in pictures), [p.rect for p in pictures]

        buttons = b.find_elements(By.CSS_SELECTOR, "#trials-table thead button")
        names = [x.text for x in buttons]
        macs = names.index("MACs")
        buttons[macs].click()
        values = [float(v) for v in column(b, macs)]
        assert values == sorted(values) and len(set(values)) > 1, values
        buttons[macs].click()
        assert [float(v) for v in column(b, macs)] == sorted(values, reverse=True)

        # Numbers sort as numbers, not as text: 9 < 10 < 100.
        b.execute_script(
            "var rows = document.querySelectorAll('#trials-table tbody tr');"
            "['100', '9', '10'].forEach(function (v, i) {"
            "  rows[i].cells[0].textContent = v; rows[i].cells[0].setAttribute('data-sort', v); });")
        buttons[0].click()
        assert column(b, 0) == ["9", "10", "100"]
        buttons[0].click()
        assert column(b, 0) == ["100", "10", "9"]

        # The screenshot check sees a page that draws nothing but its scroll bar (19 colours, deviation 3.2 here).
        b.execute_script("document.body.style.visibility = 'hidden'")
        with pytest.raises(AssertionError, match="the hidden page looks blank"):
            assert_not_blank(b.get_screenshot_as_png(), "the hidden page")
    finally:
        b.quit()

