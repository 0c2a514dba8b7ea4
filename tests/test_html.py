"""The self-contained HTML report of a ``prunescope run`` result (``prunescope.report.html``)."""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from result_fixture import metrics, result_doc, wilson
from services import missing

from prunescope.errors import UsageError
from prunescope.report.html import render_html, write_html
from prunescope.report.plots import epoch_curves_plot, interval_panels_plot, png_bytes, recovered_figure, training_plot
from prunescope.report.schema import check_result, load_result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(1)</script>"
SECTIONS = ("Verdict", "Run settings", "Dense baseline", "Sensitivity of each layer", "Chosen allocation per method",
            "Before and after, per method", "Accuracy vs sparsity", "Fine-tuning curves",
            "Fine-tuning vs training from scratch")


class Page(HTMLParser):
    """What a browser would see: elements with their attributes, headings, text, and tables as cell texts."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.headings: list[str] = []
        self.text: list[str] = []
        self.tables: list[dict] = []  # {"caption": str, "rows": [[cell text]]}
        self.styles: list[str] = []
        self._heading: list[str] | None = None
        self._cell: list[str] | None = None
        self._caption: list[str] | None = None
        self._in_style = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag == "h2":
            self._heading = []
        elif tag == "table":
            self.tables.append({"caption": "", "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "caption":
            self._caption = []
        elif tag == "style":
            self._in_style = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2" and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "caption" and self._caption is not None:
            self.tables[-1]["caption"] = "".join(self._caption).strip()
            self._caption = None
        elif tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)
            return
        self.text.append(data)
        for collecting in (self._heading, self._cell, self._caption):
            if collecting is not None:
                collecting.append(data)

    def table(self, caption_start: str) -> list[list[str]]:
        matches = [t["rows"] for t in self.tables if t["caption"].startswith(caption_start)]
        assert matches, f"no table captioned {caption_start!r} in {[t['caption'] for t in self.tables]}"
        return matches[0]

    def row(self, caption_start: str, first_cell: str) -> list[str]:
        rows = [r for r in self.table(caption_start) if r and r[0] == first_cell]
        assert rows, f"no row {first_cell!r} in table {caption_start!r}"
        return rows[0]


def pct(value: float, digits: int = 2) -> str:
    return f"{value * 100:.{digits}f}%"


@pytest.fixture(scope="module")
def doc() -> dict:
    return result_doc()


@pytest.fixture(scope="module")
def page_html(doc: dict) -> str:
    return render_html(doc)


@pytest.fixture(scope="module")
def page(page_html: str) -> Page:
    return Page(page_html)


@pytest.fixture(scope="module")
def hostile_html() -> str:
    doc = result_doc((HOSTILE, "conv2.weight", 'fc1.weight"><img src=x onerror=alert(2)>'))
    doc["model"]["name"] = "<b>net</b> & co"
    doc["settings"]["out"] = "runs/<iframe src=//evil.example>"
    doc["verdict"].append('<a href="https://evil.example">click</a> $x$ & done')
    return render_html(doc)


def test_every_section_is_present_in_order_and_without_errors(page: Page, page_html: str) -> None:
    assert page.headings == list(SECTIONS)
    assert 'class="section-error"' not in page_html
    # The verdict is the first section, right below the title.
    assert page_html.index(">Verdict</h2>") < page_html.index(">Run settings</h2>")
    text = " ".join(page.text)
    for sentence in result_doc()["verdict"]:
        assert sentence in text


def test_plots_are_embedded_pngs(page: Page) -> None:
    images = [attrs for tag, attrs in page.elements if tag == "img"]
    # dense training, sensitivity, allocation, accuracy vs sparsity, fine-tuning, scratch
    assert len(images) == 6
    for attrs in images:
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,"), src[:60]
        payload = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        assert payload.startswith(PNG_MAGIC)
        assert len(payload) > 10_000  # a drawn plot, not an empty canvas
        assert attrs.get("alt")


def test_page_references_nothing_outside_itself(page: Page, page_html: str) -> None:
    assert "http://" not in page_html and "https://" not in page_html
    for tag, attrs in page.elements:
        assert tag not in ("script", "link", "iframe", "object", "embed", "base"), tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            if name in ("src", "href", "srcset", "action", "poster", "data") and value is not None:
                assert value.startswith(("data:image/png;base64,", "#")), (tag, name, value[:60])
    css = "".join(page.styles)
    assert css.strip()
    assert not re.search(r"url\(|@import|@font-face", css)
    # ...and forbids it to the browser too.
    policy = [attrs["content"] for tag, attrs in page.elements
              if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"]
    assert policy and "default-src 'none'" in policy[0] and "script-src" not in policy[0]


def test_user_strings_are_escaped(hostile_html: str) -> None:
    page = Page(hostile_html)
    assert HOSTILE not in hostile_html
    assert "<b>net</b>" not in hostile_html and "<iframe" not in hostile_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile_html
    # The browser shows the names as text, in the tables and the verdict...
    assert page.row("sparsity of each layer", HOSTILE)[1] == "50.0%"
    assert any(row and row[0] == 'fc1.weight"><img src=x onerror=alert(2)>'
               for row in page.table("sparsity of each layer"))
    text = " ".join(page.text)
    assert f"{HOSTILE} is the most sensitive layer" in text
    assert '<a href="https://evil.example">click</a> $x$ & done' in text
    assert "prunescope report: <b>net</b> & co on fashion_mnist" in text
    # ...and no element came from them.
    assert [tag for tag, _ in page.elements if tag in ("script", "iframe", "b")] == []
    assert all((attrs.get("href") or "").startswith("#") for tag, attrs in page.elements if tag == "a")
    assert all((attrs.get("src") or "").startswith("data:") for tag, attrs in page.elements if tag == "img")
    assert 'class="section-error"' not in hostile_html  # "$" in names did not break the plots


def test_before_after_table_has_every_method_with_its_numbers(doc: dict, page: Page) -> None:
    caption = "before (dense) and after"
    assert [row[0] for row in page.table(caption)[1:]] == ["dense", "ours", "uniform", "global"]
    dense = page.row(caption, "dense")
    assert dense[4].startswith(pct(doc["dense"]["test"]["accuracy"]))
    for m in doc["methods"]:
        row = page.row(caption, m["method"])
        assert row[1] == "90.0%"
        assert row[2].startswith(pct(m["one_shot"]["val"]["accuracy"]))  # one-shot, before fine-tuning
        assert row[3].startswith(pct(m["val"]["accuracy"]))
        low, high = m["test"]["accuracy_ci"]
        assert row[4] == f"{pct(m['test']['accuracy'])} {pct(low, 1)}–{pct(high, 1)}"
        drop = (m["test"]["accuracy"] - doc["dense"]["test"]["accuracy"]) * 100
        assert row[5] == f"{drop:+.2f}"
        assert row[6] == f"{m['test']['macro_f1']:.4f}"
        assert row[7] == f"{m['measure']['params_nonzero'] / 1e3:.2f} k"
        assert row[10] == f"{m['measure']['latency']['1']['median_ms']:.3f} ms"


def test_allocation_dense_and_scan_tables(doc: dict, page: Page) -> None:
    ours, uniform, glob = (m["allocation"] for m in doc["methods"])
    assert page.table("sparsity of each layer")[0] == ["layer", "ours", "uniform", "global"]
    assert page.row("sparsity of each layer", "fc1.weight")[1:] == [
        pct(ours["fc1.weight"], 1), pct(uniform["fc1.weight"], 1), pct(glob["fc1.weight"], 1)]
    assert page.row("sparsity of each layer", "overall")[1:] == ["90.0%"] * 3
    assert page.row("metrics of the dense model", "val")[1].startswith(pct(doc["dense"]["val"]["accuracy"]))
    assert page.row("metrics of the dense model", "test")[4] == "5,000"
    assert page.row("size and speed of the dense model", "MACs per sample")[1] == "4.24 M"
    # The scan table: highest sparsity within the 0.5-point tolerance, per layer.
    assert [page.row("val accuracy of the dense model", name)[4] for name in ours] == ["50.0%", "80.0%", "90.0%"]
    assert page.row("Options of the run", "methods")[1] == '["ours", "uniform", "global"]'
    assert page.row("Model", "name")[1] == "small_cnn"


def test_scratch_comparison_in_plain_words(doc: dict, page: Page) -> None:
    text = " ".join(" ".join(page.text).split())
    assert ("Fine-tuning ours beat training from scratch (E, 10 epochs) at 90% sparsity: val 91.02% vs 88.61% "
            "(+2.41 pts), test 90.52% vs 88.07% (+2.45 pts).") in text
    assert "Fine-tuning ours beat training from scratch (B, 15 epochs)" in text
    caption = "fine-tuning the pruned network vs training"
    assert page.row(caption, "scratch-E, allocation of ours")[4:] == ["+2.41", "+2.45"]
    assert page.row(caption, "scratch-B, allocation of ours")[1] == "15"

    worse = copy.deepcopy(doc)
    worse["scratch"][0]["val"]["accuracy"] = 0.95
    worse["scratch"][0]["test"]["accuracy"] = 0.95
    worse["scratch"][1]["test"]["accuracy"] = 0.99
    text = " ".join(Page(render_html(worse)).text)
    assert "Training from scratch (E, 10 epochs) beat fine-tuning ours at 90% sparsity" in text
    assert "No clear winner between fine-tuning ours and training from scratch (B, 15 epochs)" in text


def test_sections_without_data_are_left_out() -> None:
    html = render_html(result_doc(scan=False, scratch=False))
    page = Page(html)
    assert page.headings == [s for s in SECTIONS if s not in ("Sensitivity of each layer",
                                                              "Fine-tuning vs training from scratch")]
    assert "scratch-E" not in html and 'class="section-error"' not in html
    minimal = {"schema": "prunescope.result", "version": 2, "command": "run", "settings": {"model": "m"}}
    assert Page(render_html(minimal)).headings == ["Run settings"]


def test_fold_curves_failed_methods_and_malformed_sections() -> None:
    doc = result_doc(folds=5)
    doc["methods"].append({"method": "erk", "sparsity": 0.9, "allocation": {}, "error": "conv1.weight <too small>"})
    doc["dense"]["history"] = "not a list"
    doc["pick"]["verified"] = None
    html = render_html(doc)
    text = " ".join(Page(html).text)
    assert "cross-validated on 5 val folds: held-out drop +0.41 ± 0.22 pts" in text
    assert "erk did not reach 90.0%: conv1.weight <too small>" in text
    assert 'class="section-error"' in html  # only for the failed method

    doc["scan"]["curves"] = {"metric": "accuracy"}  # no curves: the section says so, the rest renders
    page = Page(render_html(doc))
    assert "sensitivity (not rendered)" in page.headings
    assert "Before and after, per method" in page.headings


@pytest.mark.parametrize(("doc", "found"), [
    ({"schema": "prunescope.result", "version": 1, "command": "sweep"}, "version 1"),
    ({"schema": "prunescope.result", "version": 2, "command": "sweep"}, "command 'sweep'"),
    ({"schema": "something.else", "version": 2}, "schema 'something.else'"),
    ([1, 2], "a JSON list"),
])
def test_other_documents_are_one_line_usage_errors(doc: object, found: str) -> None:
    with pytest.raises(UsageError) as error:
        render_html(doc)  # type: ignore[arg-type]
    message = str(error.value)
    assert message.startswith("the document is not a prunescope run result (")
    assert found in message and message.endswith("re-run prunescope run") and "\n" not in message
    check_result(result_doc())


def test_load_result_and_write_html(tmp_path: Path, doc: dict) -> None:
    messages = []
    for setup, expected in [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "no result.json in"),
        (lambda d: (d.mkdir(), (d / "result.json").write_text('{"schema": "prunescope.result", ')),
         "is not valid JSON (line 1, column 33"),
        (lambda d: (d.mkdir(), (d / "result.json").write_bytes(b"\xff\xfe\x00")), "is not UTF-8 text"),
        (lambda d: (d.mkdir(), (d / "result.json").write_text('{"schema": "prunescope.result", "version": 1}')),
         "is not a prunescope run result (schema 'prunescope.result' version 1"),
    ]:
        out = tmp_path / f"case{len(messages)}"
        setup(out)
        with pytest.raises(UsageError, match=re.escape(expected)) as error:
            load_result(out)
        messages.append(str(error.value))
    assert all("\n" not in m for m in messages)

    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text(json.dumps(doc))
    assert load_result(out) == doc == load_result(out / "result.json")
    path = write_html(out, load_result(out))
    assert path == out / "report.html"
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "result.json"]  # no temporary files left


def test_new_plot_functions_write_pngs(tmp_path: Path, doc: dict) -> None:
    training_plot(doc["dense"]["history"], tmp_path / "training.png", "dense")
    epoch_curves_plot({"ours": [(1, 0.9), (2, 0.91)]}, tmp_path / "finetune.png", "val accuracy", "fine-tuning", 0.92)
    interval_panels_plot([("val", {"ours": [(0.9, 0.9, 0.89, 0.91)], "uniform": [(0.9, 0.88, 0.87, 0.89)]},
                           (0.92, 0.91, 0.93))], tmp_path / "panels.png", "accuracy")
    for name in ("training", "finetune", "panels"):
        assert (tmp_path / f"{name}.png").read_bytes().startswith(PNG_MAGIC)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def test_chromium_renders_the_page(tmp_path: Path, hostile_html: str) -> None:
    """Headless Chromium draws the page (hostile names included) to a non-blank screenshot."""
    from matplotlib.image import imread

    if _chromium() is None:
        missing("Chromium is not installed (Debian: apt-get install chromium), so the page is not rendered here")

    report = tmp_path / "report.html"
    report.write_text(hostile_html, encoding="utf-8")
    shot = tmp_path / "shot.png"
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2400",
               report.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.is_file() and shot.read_bytes().startswith(PNG_MAGIC)
    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    rgb = (pixels[..., :3] * 255).round().astype("uint8").reshape(-1, 3)
    colours = {tuple(c) for c in rgb[:: 97]}
    assert len(colours) > 20  # text, table bands, plots: far from a blank page
    non_white = (rgb < 240).any(axis=1).mean()
    assert 0.02 < non_white < 0.9


def test_templates_ship_as_package_data() -> None:
    """The page comes from the package's own template files (declared in pyproject's package-data)."""
    from importlib.resources import files

    templates = files("prunescope.report") / "templates"
    assert {"report.html.j2", "report.css"} <= {entry.name for entry in templates.iterdir()}
    assert (templates / "report.css").read_text(encoding="utf-8").strip() in render_html(result_doc())


def _with_reconstruction_and_recovered(doc: dict) -> dict:
    """``doc`` with the two run stages that used to be verdict sentences only: the one-shot comparison pruned by
    reconstruction (beside masks alone) and the recovered sweep, numbers made up but consistent."""
    doc = copy.deepcopy(doc)
    doc["settings"]["calibration"] = 512
    doc["one_shot"] = {"criterion": "magnitude", "rows": [
        {"method": "ours", "sparsity": 0.9, "val": metrics(0.8962, 0.89, 0.31), "test": None, "error": None},
        {"method": "uniform", "sparsity": 0.9, "val": metrics(0.6184, 0.59, 1.18), "test": None, "error": None},
        {"method": "uniform+", "sparsity": 0.9, "val": None, "test": None, "error": "cannot reach 90%"},
    ]}
    doc["one_shot_reconstructed"] = {"criterion": "magnitude", "reconstruct": "mask",
                                     "fallback": {"rnn.weight_hh_l0": "a recurrent gate matrix"}, "rows": [
        {"method": "ours", "sparsity": 0.9, "val": metrics(0.9031, 0.90, 0.29), "test": None, "error": None},
        {"method": "uniform", "sparsity": 0.9, "val": metrics(0.7412, 0.73, 0.80), "test": metrics(0.7388, 0.73, 0.81),
         "error": None},
        {"method": "uniform+", "sparsity": 0.9, "val": None, "test": None, "error": "cannot reach 90%"},
    ]}
    doc["recovered"] = {
        "epochs": 4, "baseline": "global", "dense_val": 0.9104,
        "curves": {"ours": [{"sparsity": 0.5, "val": 0.9121}, {"sparsity": 0.9, "val": 0.9050},
                            {"sparsity": 0.95, "val": 0.8702}],
                   "global": [{"sparsity": 0.5, "val": 0.9098}, {"sparsity": 0.9, "val": 0.8911},
                              {"sparsity": 0.95, "val": None}]},
        "reach": {"dense": 0.9104, "max_drop": 0.01, "points": [], "widened": [], "bisected": [], "answer": 0.9,
                  "first_failure": 0.95},
        "answer": 0.9, "test": metrics(0.8977, 0.89, 0.33),
        "gradual": {"sparsity": 0.9, "steps": 4, "epochs": 4, "val": metrics(0.9002, 0.89, 0.32),
                    "test": metrics(0.8891, 0.88, 0.35)},
    }
    return doc


def test_reconstructed_one_shot_and_recovered_sweep_are_tables_and_a_plot(doc: dict) -> None:
    html = render_html(_with_reconstruction_and_recovered(doc))
    page = Page(html)
    assert 'class="section-error"' in html  # uniform+'s refusal, shown in red; every section rendered
    assert not [h for h in page.headings if "not rendered" in h]
    expected = list(SECTIONS)
    expected.insert(expected.index("Accuracy vs sparsity") + 1, "One-shot with layer-wise reconstruction")
    expected.append("How far after fine-tuning")
    assert page.headings == expected

    rebuilt = {(r[0], r[1]): r for r in page.table("one-shot accuracy with masks alone and with layer-wise")}
    ours, uniform = rebuilt["90.0%", "ours"], rebuilt["90.0%", "uniform"]
    low, high = wilson(0.9031)
    assert ours[2:5] == [pct(0.8962), f"{pct(0.9031)} {pct(low, 1)}–{pct(high, 1)}", "+0.69"]
    assert ours[5] == "–" and ours[6] == "0"
    assert uniform[2] == pct(0.6184) and uniform[4] == "+12.28" and uniform[5].startswith(pct(0.7388))
    assert rebuilt["90.0%", "uniform+"][2:6] == ["–"] * 4
    text = " ".join(page.text)
    assert "uniform+ at 90.0%: cannot reach 90%" in text
    assert "rnn.weight_hh_l0 (a recurrent gate matrix)" in text and "on 512 train examples" in text

    recovered = page.table("accuracy after fine-tuning; answer 90.0%, bound: val ≥ 90.04%")[1:]  # under the header
    cells = {(r[0], r[1]): r[2:] for r in recovered}
    assert [(r[0], r[1]) for r in recovered] == [("50.0%", "ours"), ("50.0%", "global"), ("90.0%", "ours"),
                                                ("90.0%", "global"), ("95.0%", "ours"), ("95.0%", "global"),
                                                ("90.0%", "gradual (AGP)")]
    assert cells["90.0%", "ours"][0] == pct(0.9050) and cells["90.0%", "ours"][1].startswith(pct(0.8977))
    assert cells["90.0%", "global"] == [pct(0.8911), "–", "4"]
    assert cells["95.0%", "global"][0] == "not reached" and cells["95.0%", "ours"] == [pct(0.8702), "–", "4"]
    assert cells["90.0%", "gradual (AGP)"][0].startswith(pct(0.9002))
    assert cells["90.0%", "gradual (AGP)"][1].startswith(pct(0.8891)) and cells["90.0%", "gradual (AGP)"][2] == "4"
    alts = [attrs.get("alt") for tag, attrs in page.elements if tag == "img"]
    assert "val accuracy after fine-tuning versus sparsity, with the bound and the answer" in alts
    assert len(alts) == 7


def test_recovered_plot_marks_the_bound_and_the_answer() -> None:
    figure = recovered_figure({"ours": [(0.5, 0.91), (0.9, 0.905)], "global": [(0.5, 0.909)]}, 0.9104, 0.9004, 0.9,
                              {"ours at the answer, test": (0.9, 0.8977)})
    axes = figure.axes[0]
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    assert labels == ["ours", "global", "ours at the answer, test", "dense (91.04%)", "bound (90.04%)",
                      "answer (90.0%)"]
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert list(lines["bound (90.04%)"].get_ydata()) == [0.9004, 0.9004]
    assert list(lines["answer (90.0%)"].get_xdata()) == [0.9, 0.9]
    assert png_bytes(figure).startswith(PNG_MAGIC)


def test_the_channel_recovered_answer_is_a_table_with_its_measured_speedup(doc: dict) -> None:
    doc = copy.deepcopy(doc)
    test = {"accuracy": 0.9612, "accuracy_ci": [0.94, 0.975], "n": 360}
    doc["recovered_channels"] = {
        "granularity": "channel", "epochs": 4, "dense_val": 0.97, "dense_macs": 120000,
        "points": [{"removed_macs": 0.3, "val": 0.968, "params": 9000, "macs": 84000},
                   {"removed_macs": 0.5, "val": 0.966, "params": 7000, "macs": 59800},
                   {"removed_macs": 0.75, "val": 0.91, "params": 3000, "macs": 29900}],
        "reach": {"dense": 0.97, "max_drop": 0.005, "points": [], "widened": [], "bisected": [], "answer": 0.5,
                  "first_failure": 0.75},
        "answer": 0.5, "mac_reduction": 120000 / 59800, "test": test,
        "measure": {"speedup": {"1": 1.21, "256": 1.83}, "speedup_range": {"1": [1.1, 1.3], "256": [1.7, 1.9]}},
    }
    page = Page(render_html(doc))
    assert "How far in whole channels, after fine-tuning" in page.headings
    rows = {r[0]: r[1:] for r in page.table("whole channels removed, then fine-tuned; dense 120,000 MACs")[1:]}
    assert list(rows) == ["30%", "50%", "75%"]
    assert rows["50%"][:3] == ["7000", "59800", pct(0.966)] and rows["50%"][3].startswith(pct(0.9612))
    assert rows["75%"][3] == "–" and rows["30%"][3] == "–"  # test read once, at the answer only
    timing = {r[0]: r[1:] for r in page.table("the answer (2.01× fewer MACs) timed")[1:]}
    assert timing == {"1": ["1.21×", "1.10–1.30×"], "256": ["1.83×", "1.70–1.90×"]}
