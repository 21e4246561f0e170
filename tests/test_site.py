"""`minirlhf site`: the executed notebooks as a static HTML site that opens offline.

Two parts: small hand-made notebooks pin what each piece does (the index line read from the first
cell, widgets turned into text, figures embedded, remote scripts removed, prev/next links); then the
real notebooks are rendered once and opened in headless Chromium (a screenshot of the index and of
one page, the DOM after load, the figures decoded by the browser). No browser is a failure, not a
skip: scripts/test.sh installs Debian's chromium when none is on PATH.
"""

import base64
import html
import io
import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from minirlhf import site
from minirlhf.cli import main

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_PNG = re.compile(r'<img\s[^>]*src="data:image/png;base64,([^"]+)"')
REMOTE = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.IGNORECASE)


def _png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def _image_output(png: bytes):
    return new_output("display_data", data={"image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"})


def _write(folder: Path, name: str, cells, metadata=None) -> Path:
    nb = new_notebook(cells=cells, metadata=metadata or {})
    path = folder / name
    nbformat.write(nb, path)
    return path


def _links(page: Path) -> list[str]:
    return re.findall(r'<a\s[^>]*href="([^"#]+)(?:#[^"]*)?"', page.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# The pieces, on hand-made notebooks
# ---------------------------------------------------------------------------------------------


def test_the_index_line_is_read_from_the_first_cell(tmp_path):
    path = _write(tmp_path, "07_diffusion.ipynb", [new_markdown_cell(
        "# 07 · RL for diffusion and flow models\n\n*Prerequisites: 03, 05; what a DDPM / flow model samples. "
        "Runs in 2.5 min on an idle 2-core CPU. The syllabus: `docs/course.md`.*\n\nMotivation ...")])
    info = site.notebook_info(path, nbformat.read(path, as_version=4))
    assert (info.number, info.title) == ("07", "RL for diffusion and flow models")
    assert info.prerequisites == "03, 05; what a DDPM / flow model samples"
    assert info.run_time == "2.5 min"
    assert (info.page, info.label) == ("07_diffusion.html", "07 · RL for diffusion and flow models")

    bare = _write(tmp_path, "scratch_notes.ipynb", [new_code_cell("1 + 1")])  # no heading, no line
    info = site.notebook_info(bare, nbformat.read(bare, as_version=4))
    assert (info.number, info.title, info.prerequisites, info.run_time) == ("", "scratch notes", "", "")


def test_a_saved_progress_bar_becomes_the_line_tqdm_printed():
    def model(name, **state):
        return {"model_name": name, "state": {"_model_name": name, **state}}

    state = {"box": model("HBoxModel", children=["IPY_MODEL_desc", "IPY_MODEL_bar", "IPY_MODEL_counts"]),
             "desc": model("HTMLModel", value="Loading\u2007weights:\u2007100%"),
             "bar": model("FloatProgressModel", min=0.0, max=29.0, value=29.0),
             "counts": model("HTMLModel", value="\u200729/29\u2007[00:00&lt;00:00,\u20071812.50it/s]"),
             "half": model("FloatProgressModel", min=0.0, max=8.0, value=4.0)}
    assert site._widget_text("box", state) == "Loading weights: 100%|██████████| 29/29 [00:00<00:00, 1812.50it/s]"
    assert site._widget_text("half", state) == "|█████     |"
    assert site._widget_text("gone", state) == ""


def _widget_notebook(tmp_path, with_state: bool) -> Path:
    view = {"model_id": "box", "version_major": 2, "version_minor": 0}
    out = new_output("display_data", data={site.WIDGET_VIEW: view, "text/plain": "Steps:   0%|  | 0/5"})
    state = {"box": {"model_name": "HTMLModel", "state": {"_model_name": "HTMLModel", "value": "Steps: 100% 5/5"}}}
    meta = {"widgets": {"application/vnd.jupyter.widget-state+json": {"state": state}}} if with_state else {}
    return _write(tmp_path, "01_w.ipynb", [new_code_cell("run()", outputs=[out])], meta)


@pytest.mark.parametrize("with_state, shown", [(True, "Steps: 100% 5/5"), (False, "Steps:   0%|  | 0/5")])
def test_widgets_render_as_text_with_no_widget_script(tmp_path, with_state, shown):
    _, body = site.render_cells(_widget_notebook(tmp_path, with_state))
    assert shown in body
    assert "<script" not in body  # neither the widget state nor the view (they need widget JS from a CDN)


def test_figures_are_embedded_and_remote_resources_removed(tmp_path):
    red, blue, green = _png(30, 20, (255, 0, 0)), _png(10, 40, (0, 0, 255)), _png(8, 8, (0, 255, 0))
    (tmp_path / "fig.png").write_bytes(green)  # a markdown cell's image file, beside the notebook
    html_out = new_output("display_data", data={"text/html": (
        '<script src="https://cdn.example.org/plotly.js"></script><link rel="stylesheet" '
        'href="//cdn.example.org/x.css"><b id="kept">a local table</b>'), "text/plain": "..."})
    path = _write(tmp_path, "03_figs.ipynb", [
        new_markdown_cell("# 03 · Figures\n\nSee [the reward model](02_rm.ipynb#fit) and "
                          "[elsewhere](other.ipynb) and $\\beta \\log \\pi$.\n\n![a local figure](fig.png)"),
        new_code_cell("plot()", outputs=[_image_output(red), html_out, _image_output(blue)])])
    _, body = site.render_cells(path, stems={"02_rm", "03_figs"})
    assert [base64.b64decode(b) for b in EMBEDDED_PNG.findall(body)] == [green, red, blue]  # in order, byte for byte
    assert '<b id="kept">a local table</b>' in body
    assert "cdn.example.org" not in body and not REMOTE.search(body)
    assert 'href="02_rm.html#fit"' in body  # a notebook of the site: its page
    assert 'href="other.ipynb"' in body  # not in the site: left as written
    assert "$\\beta \\log \\pi$" in body  # math stays as TeX


def test_pages_link_to_the_index_and_to_prev_and_next(tmp_path):
    src, out = tmp_path / "nb", tmp_path / "out"
    src.mkdir()
    for name, title in [("00_a", "Alpha"), ("01_b", "Beta"), ("02_c", "Gamma")]:
        _write(src, f"{name}.ipynb", [new_markdown_cell(f"# {name[:2]} · {title}")])
    pages = site.build_site(out, src)
    assert [p.name for p in pages] == ["index.html", "00_a.html", "01_b.html", "02_c.html"]
    assert _links(out / "index.html") == ["00_a.html", "01_b.html", "02_c.html"]
    # each page has its nav twice (top and bottom): prev (if any), index, next (if any)
    assert _links(out / "00_a.html") == ["index.html", "01_b.html"] * 2
    assert _links(out / "01_b.html") == ["00_a.html", "index.html", "02_c.html"] * 2
    assert _links(out / "02_c.html") == ["01_b.html", "index.html"] * 2
    assert "<title>01 · Beta — minirlhf</title>" in (out / "01_b.html").read_text(encoding="utf-8")
    index = (out / "index.html").read_text(encoding="utf-8")
    assert index.count("<td>—</td>") == 3 and index.count('<td class="time">—</td>') == 3  # nothing said: a dash


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_out_and_notebooks_are_one_line_errors(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    assert "exists and is not a folder (--out" in _one_line_error(capsys, ["site", "--out", str(a_file)])
    # a folder under a file cannot be created (root ignores permissions, so this is the unwritable case)
    assert "cannot write there" in _one_line_error(capsys, ["site", "--out", str(a_file / "site")])
    assert f"no such folder (--notebooks {tmp_path / 'nope'})" in _one_line_error(
        capsys, ["site", "--notebooks", str(tmp_path / "nope"), "--out", str(tmp_path / "s")])
    assert "no .ipynb files" in _one_line_error(
        capsys, ["site", "--notebooks", str(tmp_path), "--out", str(tmp_path / "s")])
    monkeypatch.setenv("MINIRLHF_BROWSER", "no-such-browser")  # --screenshot with no browser: said before the build
    err = _one_line_error(capsys, ["site", "--out", str(tmp_path / "shot"), "--screenshot"])
    assert "MINIRLHF_BROWSER=no-such-browser is not an executable" in err and "apt-get install chromium" in err
    assert not (tmp_path / "shot").exists()
    broken = tmp_path / "nb"
    broken.mkdir()
    (broken / "00_x.ipynb").write_text("{ not json")
    assert "not a readable notebook" in _one_line_error(
        capsys, ["site", "--notebooks", str(broken), "--out", str(tmp_path / "s")])


# ---------------------------------------------------------------------------------------------
# The real notebooks, in a headless browser
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    path = site.find_browser()
    if path is None:
        pytest.fail(f"the site test needs a headless Chrome/Chromium and found none; {site.INSTALL_HINT}. "
                    "scripts/test.sh installs Debian's chromium with apt-get when it can.")
    return path


@pytest.fixture(scope="module")
def real_site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    pages = site.build_site(out, ROOT / "notebooks")
    print(f"site build: {time.perf_counter() - start:.1f} s for {len(pages) - 1} notebooks")
    return out, pages


def test_every_notebook_has_a_page_and_every_index_link_resolves(real_site):
    out, pages = real_site
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert [p.name for p in pages[1:]] == [nb.stem + ".html" for nb in notebooks]
    links = _links(out / "index.html")
    assert links == [nb.stem + ".html" for nb in notebooks]
    for page in pages:
        for link in (x for x in _links(page) if not re.match(r"[a-z]+:", x)):  # not https:, mailto: ...
            assert (out / link).is_file(), f"{page.name} links to {link}, which is not in the site"


def test_every_figure_is_embedded_and_nothing_is_fetched(real_site):
    out, pages = real_site
    for page in pages[1:]:
        nb = json.loads((ROOT / "notebooks" / (page.stem + ".ipynb")).read_text(encoding="utf-8"))
        stored = [o["data"]["image/png"] for c in nb["cells"] for o in c.get("outputs", [])
                  if "image/png" in o.get("data", {})]
        text = page.read_text(encoding="utf-8")
        embedded = EMBEDDED_PNG.findall(text)
        assert len(embedded) == len(stored), page.name
        assert [base64.b64decode(e) for e in embedded] == [base64.b64decode("".join(s)) for s in stored], page.name
        assert not REMOTE.search(text), f"{page.name} loads something over the network"
        assert "widget-state" not in text and "require.js" not in text and "MathJax" not in text


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _distinct_colours(path: Path) -> int:
    from PIL import Image

    return len(Image.open(path).convert("RGB").getcolors(maxcolors=1 << 20) or [])


def test_the_index_and_a_page_in_headless_chromium(real_site, browser, tmp_path):
    out, pages = real_site
    index_dom = site.headless(out / "index.html")
    assert "<h1>minirlhf notebooks</h1>" in index_dom
    for page in pages[1:]:
        nb = nbformat.read(ROOT / "notebooks" / (page.stem + ".ipynb"), as_version=4)
        assert html.escape(site.notebook_info(page, nb).title) in index_dom

    page = out / "00_world.html"
    page_dom = site.headless(page)
    assert "<title>00 · The tiny world" in page_dom and "The tiny world: tasks with rewards we can check" in page_dom
    assert 'href="index.html"' in page_dom and 'href="01_sft.html"' in page_dom

    for name, shot in [("index", out / "index.html"), ("page", page)]:
        png = tmp_path / f"{name}.png"
        site.headless(shot, screenshot=png, size=(1200, 900))
        assert _png_size(png) == (1200, 900)
        assert png.stat().st_size > 20_000, f"{name}: a near-empty screenshot"
        assert _distinct_colours(png) > 100, f"{name}: the screenshot is (nearly) one colour"


IMAGES_SHOWN = ('<script>addEventListener("load", () => { document.body.dataset.imagesShown = '
                '[...document.images].filter(i => i.complete && i.naturalWidth > 0).length; });</script>')


def _images_shown(page: Path, tmp_path: Path) -> int:
    """How many of the page's images the browser decoded and shows (a copy of the page, with a probe)."""
    probe = tmp_path / ("probe_" + page.name)
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", IMAGES_SHOWN + "</body>"), encoding="utf-8")
    m = re.search(r'data-images-shown="(\d+)"', site.headless(probe))
    assert m, "the probe did not run"
    return int(m.group(1))


def test_the_browser_shows_every_figure_offline(real_site, browser, tmp_path):
    out, _ = real_site
    page = out / "07_diffusion_rl.html"  # the notebook with the most figures
    n = len(EMBEDDED_PNG.findall(page.read_text(encoding="utf-8")))
    assert n >= 5
    assert _images_shown(page, tmp_path) == n
    # the probe can fail: a page whose second image is not a PNG shows one fewer
    broken = tmp_path / "broken.html"
    text = page.read_text(encoding="utf-8")
    second = EMBEDDED_PNG.findall(text)[1]
    broken.write_text(text.replace(second, base64.b64encode(b"not a png").decode()), encoding="utf-8")
    assert _images_shown(broken, tmp_path) == n - 1


def test_site_command_writes_the_site_and_a_screenshot(tmp_path, browser, capsys):
    src = tmp_path / "nb"
    src.mkdir()
    _write(src, "00_fig.ipynb", [new_markdown_cell("# 00 · A figure\n\n*Prerequisites: none. Runs in 3 s.*"),
                                 new_code_cell("plot()", outputs=[_image_output(_png(64, 48, (0, 128, 0)))])])
    assert main(["site", "--notebooks", str(src), "--out", str(tmp_path / "out"), "--screenshot"]) == 0
    said = capsys.readouterr().out
    assert "wrote index.html and 1 notebook page to" in said and "index.png" in said
    assert _png_size(tmp_path / "out" / "index.png") == (1200, 900)
    assert '<td>none</td><td class="time">3 s</td>' in (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
