"""`minirlhf site`: the executed notebooks as a small static HTML site, to read without running them.

    minirlhf site                         # -> site/index.html and one page per notebook
    minirlhf site --out /tmp/course --screenshot    # ... and index.png, taken by headless Chromium

Nothing is executed: each page shows the outputs stored in the notebook when it was last run. The
pages come from nbconvert's `basic` template (the cells only, no <head>: so no require.js and no
MathJax from a CDN), wrapped here in one small page with an inline stylesheet and links to the
index and to the previous and next notebook. Figures are embedded as base64 PNG, progress-bar
widgets become the line of text tqdm would have printed, and math stays as TeX. The folder opens
from file:// with no network, and can be copied anywhere as it is.

The index is a table of the notebooks: number, title, prerequisites and run time, read from the
line each notebook's first cell opens with ("*Prerequisites: 02, 03. Runs in 1.7 min on ...*").
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, DataFileNotFound, UserError

REPO_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = ("install one: `apt-get install chromium` (Debian/Ubuntu), `brew install --cask chromium` "
                "(macOS), or set MINIRLHF_BROWSER to a Chrome/Chromium binary")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@dataclass
class NotebookInfo:
    """What the index says about one notebook (read from its first cell)."""

    path: Path
    number: str
    """"05" from "05_grpo.ipynb" ("" when the name has no number)."""
    title: str
    """The first heading without its number: "GRPO and its family: RL on verifiable rewards"."""
    prerequisites: str
    """"03 (clipped surrogate, KL); 00 (the checker)", or "" when the first cell does not say."""
    run_time: str
    """"3.0 min", or "" when the first cell does not say."""

    @property
    def page(self) -> str:
        return self.path.stem + ".html"

    @property
    def label(self) -> str:
        return f"{self.number} · {self.title}" if self.number else self.title


def notebook_info(path: Path, nb) -> NotebookInfo:
    """Number, title, prerequisites and run time of a notebook, from its file name and first cell."""
    first = "".join(nb.cells[0].source) if nb.cells else ""
    number = m.group(1) if (m := re.match(r"(\d+)", path.stem)) else ""
    heading = re.search(r"^#\s+(.+?)\s*$", first, re.MULTILINE)
    title = heading.group(1) if heading else path.stem.replace("_", " ")
    title = re.sub(r"^\d+\s*[·:.\-–]\s*", "", title)  # "05 · GRPO ..." -> "GRPO ..."
    prereq = re.search(r"Prerequisites:\s*(.+?)\.(?:\s|\*|$)", first)
    run_time = re.search(r"Runs in\s+(\d+(?:\.\d+)?\s*[a-z]+)", first)
    return NotebookInfo(path, number, title, prereq.group(1).strip() if prereq else "",
                        run_time.group(1) if run_time else "")


# ---------------------------------------------------------------------------------------------
# One notebook -> the HTML of its cells
# ---------------------------------------------------------------------------------------------


def _widget_text(model_id: str, state: dict) -> str:
    """The text a saved ipywidgets model showed: a tqdm bar is an HBox of (description, progress, counts)."""
    model = state.get(model_id, {}).get("state", {})
    if "children" in model:
        return "".join(_widget_text(c.removeprefix("IPY_MODEL_"), state) for c in model["children"])
    if model.get("_model_name", "").endswith("ProgressModel"):
        lo, hi = model.get("min", 0), model.get("max", 1)
        filled = round(10 * (model.get("value", lo) - lo) / ((hi - lo) or 1))
        return "|" + "█" * filled + " " * (10 - filled) + "|"
    value = model.get("value")
    return html.unescape(value).replace("\u2007", " ") if isinstance(value, str) else ""


def _widgets_as_text(nb) -> None:
    """Replace each widget output by the line it showed when the notebook was saved (no widget JS)."""
    import nbformat

    state = nb.metadata.pop("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for cell in nb.cells:
        for i, out in enumerate(cell.get("outputs", [])):
            data = out.get("data", {})
            if WIDGET_VIEW not in data:
                continue
            text = _widget_text(data[WIDGET_VIEW].get("model_id", ""), state)
            if text:
                cell.outputs[i] = nbformat.v4.new_output("stream", name="stderr", text=text + "\n")
            else:  # no saved state: the plain-text fallback nbconvert would show
                del data[WIDGET_VIEW]


_REMOTE = re.compile(r"""<script\b[^>]*\bsrc\s*=\s*["']?(?:https?:)?//[^>]*>\s*</script>"""
                     r"""|<link\b[^>]*\bhref\s*=\s*["']?(?:https?:)?//[^>]*>""", re.IGNORECASE)


def _unchanged(text: str) -> str:
    return text


def render_cells(path: Path, stems: set[str] = frozenset()) -> tuple[object, str]:
    """(the notebook, the HTML of its cells with their stored outputs). Nothing is executed.
    Links to another notebook of the site ("02_reward_model.ipynb") point to its page."""
    import nbformat
    from nbconvert import HTMLExporter

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # noqa: BLE001  (nbformat raises several kinds for a file that is not a notebook)
        raise UserError(f"not a readable notebook: {' '.join(str(e).split())[:200]}", str(path)) from None
    _widgets_as_text(nb)
    # clean_html: the template runs bleach over every highlighted code cell (half the build time); Pygments'
    # output is already escaped, and the notebooks' own HTML outputs are not sanitised either way
    exporter = HTMLExporter(template_name="basic", embed_images=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, filters={"clean_html": _unchanged})
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"path": str(path.parent)}})
    body = _REMOTE.sub("", body)  # a notebook's own HTML output must not pull anything from the network

    def local(m: re.Match) -> str:
        return f'href="{m.group(1)}.html{m.group(2) or ""}"' if m.group(1) in stems else m.group(0)

    body = re.sub(r'href="([\w\-]+)\.ipynb(#[^"]*)?"', local, body)
    return nb, body


# ---------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------


def _style() -> str:
    from pygments.formatters import HtmlFormatter

    return """
body { font: 16px/1.55 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; margin: 0; }
main { max-width: 960px; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
nav { display: flex; justify-content: space-between; gap: 1rem; padding: .6rem 0; font-size: .95rem;
      border-bottom: 1px solid #ddd; }
nav.bottom { border-top: 1px solid #ddd; border-bottom: none; margin-top: 2rem; }
a { color: #0b57d0; text-decoration: none; } a:hover { text-decoration: underline; }
h1, h2, h3 { line-height: 1.25; } .anchor-link { display: none; }
code, pre { font: 13.5px/1.45 ui-monospace, "DejaVu Sans Mono", Menlo, monospace; }
.input_area pre { background: #f6f8fa; border: 1px solid #e3e6ea; border-radius: 6px; padding: .7rem .9rem;
                  overflow-x: auto; margin: .8rem 0 .3rem; }
.output_area pre { margin: .2rem 0; padding: .2rem .9rem; overflow-x: auto; white-space: pre-wrap; }
.output_stderr pre { background: #fdf3f2; }
.output_area img { max-width: 100%; height: auto; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .95rem; }
th, td { border: 1px solid #d6d9de; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f3f4f6; } td.time { white-space: nowrap; }
.note { color: #555; font-size: .95rem; }
""" + HtmlFormatter(style="default").get_style_defs(".highlight")


def _page(title: str, nav: str | None, content: str) -> str:
    top, bottom = (f'<nav class="top">{nav}</nav>\n', f'\n<nav class="bottom">{nav}</nav>') if nav else ("", "")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_style()}</style>\n</head>\n<body>\n<main>\n"
            f"{top}{content}{bottom}\n</main>\n</body>\n</html>\n")


def _nav(prev: NotebookInfo | None, nxt: NotebookInfo | None) -> str:
    def link(info, arrow_left):
        if info is None:
            return "<span></span>"
        text = f"← {info.label}" if arrow_left else f"{info.label} →"
        return f'<a href="{info.page}" rel="{"prev" if arrow_left else "next"}">{html.escape(text)}</a>'

    return f'{link(prev, True)}<a href="index.html">All notebooks</a>{link(nxt, False)}'


def _index(infos: list[NotebookInfo]) -> str:
    rows = "\n".join(
        f'<tr><td>{html.escape(i.number)}</td><td><a href="{i.page}">{html.escape(i.title)}</a></td>'
        f"<td>{html.escape(i.prerequisites) or '—'}</td>"
        f"<td class=\"time\">{html.escape(i.run_time) or '—'}</td></tr>"
        for i in infos)
    content = (
        "<h1>minirlhf notebooks</h1>\n"
        '<p class="note">The course notebooks with the outputs stored when they were last run: read them here, '
        "run them with <code>jupyter lab notebooks/</code>. Run times are on an idle 2-core CPU. "
        f"Built by <code>minirlhf site</code> on {time.strftime('%Y-%m-%d')}.</p>\n"
        "<table>\n<thead><tr><th>#</th><th>Notebook</th><th>Prerequisites</th><th>Run time</th></tr></thead>\n"
        f"<tbody>\n{rows}\n</tbody>\n</table>")
    return _page("minirlhf notebooks", None, content)


def _writable_folder(out: Path) -> None:
    """Create `out` (or check it), and that a file can be written in it: else one ConfigError."""
    where = f"--out {out}"
    if out.exists() and not out.is_dir():
        raise ConfigError("exists and is not a folder", where)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write there ({e.strerror or e})", where) from None


def build_site(out: str | Path = "site", notebooks: str | Path | None = None) -> list[Path]:
    """Render every notebooks/*.ipynb (stored outputs, nothing executed) into `out`: index.html and
    one page per notebook. Returns the pages written, index first."""
    try:
        import nbconvert  # noqa: F401
    except ImportError:
        raise UserError("nbconvert is not installed: pip install -e '.[notebooks]' (it comes with jupyter)") from None
    src = Path(notebooks) if notebooks is not None else (Path("notebooks") if Path("notebooks").is_dir()
                                                          else REPO_NOTEBOOKS)
    if not src.is_dir():
        raise DataFileNotFound("no such folder" if not src.exists() else "not a folder", f"--notebooks {src}")
    paths = sorted(src.glob("*.ipynb"))
    if not paths:
        raise DataFileNotFound("no .ipynb files in this folder", f"--notebooks {src}")
    out = Path(out)
    _writable_folder(out)

    stems = {p.stem for p in paths}
    rendered = [render_cells(p, stems) for p in paths]
    infos = [notebook_info(p, nb) for p, (nb, _) in zip(paths, rendered)]
    written = [out / "index.html"]
    written[0].write_text(_index(infos), encoding="utf-8")
    for k, (info, (_, body)) in enumerate(zip(infos, rendered)):
        prev = infos[k - 1] if k > 0 else None
        nxt = infos[k + 1] if k + 1 < len(infos) else None
        page = out / info.page
        page.write_text(_page(f"{info.label} — minirlhf", _nav(prev, nxt), body), encoding="utf-8")
        written.append(page)
    return written


# ---------------------------------------------------------------------------------------------
# Headless browser: a screenshot of a page, or its DOM after load (used by --screenshot and the tests)
# ---------------------------------------------------------------------------------------------


def find_browser() -> str | None:
    """$MINIRLHF_BROWSER, else the first Chrome/Chromium on PATH, else None."""
    if os.environ.get("MINIRLHF_BROWSER"):
        return shutil.which(os.environ["MINIRLHF_BROWSER"])
    return next((p for name in BROWSERS if (p := shutil.which(name))), None)


def _browser() -> str:
    """The browser to run, or a UserError saying how to install one."""
    if (path := find_browser()) is not None:
        return path
    looked = (f"MINIRLHF_BROWSER={os.environ['MINIRLHF_BROWSER']} is not an executable"
              if os.environ.get("MINIRLHF_BROWSER") else f"none of {', '.join(BROWSERS)} is on PATH")
    raise UserError(f"no Chrome/Chromium found ({looked}); {INSTALL_HINT}")


def headless(page: Path, *, screenshot: Path | None = None, size: tuple[int, int] = (1200, 900),
             timeout: float = 60.0) -> str:
    """Open `page` (a local file) in headless Chromium, offline (every host name fails to resolve).
    Returns the DOM after load (`--dump-dom`), or writes a PNG of the window to `screenshot`."""
    browser = _browser()
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox",  # --no-sandbox: Chromium refuses to run as root without it
               "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
               f"--window-size={size[0]},{size[1]}"]
        cmd += [f"--screenshot={Path(screenshot).resolve()}"] if screenshot else ["--dump-dom"]
        try:
            done = subprocess.run(cmd + [Path(page).resolve().as_uri()], capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"{browser} did not finish in {timeout:.0f} s", str(page)) from None
    if done.returncode != 0 or (screenshot and not Path(screenshot).is_file()):
        tail = " ".join(done.stderr.split())[-300:]
        raise UserError(f"{browser} failed (exit {done.returncode}): {tail}", str(page))
    return done.stdout


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def add_site_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="site", help="folder to write the site to (default: site/)")
    p.add_argument("--notebooks", default=None,
                   help="folder of executed .ipynb files (default: notebooks/ here, else the repository's)")
    p.add_argument("--screenshot", action="store_true",
                   help="also save index.png, the index as headless Chromium shows it (needs chromium)")


def run_site(args: argparse.Namespace) -> int:
    if args.screenshot:
        _browser()  # no browser: say so before the build, not after
    start = time.perf_counter()
    pages = build_site(args.out, args.notebooks)
    size = sum(p.stat().st_size for p in pages)
    n = len(pages) - 1
    print(f"wrote index.html and {n} notebook page{'s' * (n != 1)} to {args.out}/ "
          f"({size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s); open {pages[0].resolve().as_uri()}")
    if args.screenshot:
        png = Path(args.out) / "index.png"
        headless(pages[0], screenshot=png)
        print(f"screenshot: {png}")
    return 0
