"""Make ``docs/_static/report.png``, the picture of the HTML report in the outputs guide.

It annotates Scanpy's ``pbmc68k_reduced`` as tutorial 1 does (scored, the doubtful cluster
boosted) against the tutorials' scripted model (``tests/tutorial_model.py``, served on
127.0.0.1: no key, no network), writes the report, opens it in Debian's Chromium driven by
Playwright (``apt-get install chromium``; the test extra installs Playwright) and saves
the top of the page as a palette PNG. Run it from anywhere, after a change to the report::

    python docs/make_report_screenshot.py

The documentation build only shows the committed PNG: it needs no browser.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the scripted model lives with the tests

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WIDTH = 1200  # pixels: sharp in the docs' content column, yet small
HEIGHT = 1500  # the run's header, the UMAP and the first cards


def write_report(folder: Path) -> Path:
    """Annotate pbmc68k_reduced against the scripted model and write its report.

    Parameters
    ----------
    folder
        Where the report goes.

    Returns
    -------
    pathlib.Path
        The report.
    """
    import scanpy as sc
    import tutorial_model

    import cassia_sc

    adata = sc.datasets.pbmc68k_reduced()
    sc.tl.rank_genes_groups(adata, "louvain", method="wilcoxon", pts=True)
    with tutorial_model.serve() as llm:
        cassia_sc.tl.annotate(
            adata,
            tissue="blood",
            species="human",
            score=True,
            boost_below=75,
            **llm.options(),
        )
    return cassia_sc.export.report(adata, folder / "pbmc_report.html")


def screenshot(report: Path, output: Path) -> None:
    """Save the top of ``report``, as Chromium shows it, to ``output`` (a palette PNG).

    Parameters
    ----------
    report
        The HTML report.
    output
        The PNG to write.
    """
    from PIL import Image
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise SystemExit(f"needs Debian's Chromium at {CHROMIUM}: apt-get install chromium")
    shot = report.with_suffix(".png")  # Chromium's true-colour PNG, beside the report
    with sync_playwright() as playwright:
        # Never a browser download: Debian's, as tests/test_report.py launches it.
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.goto(report.resolve().as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    # 256 colours lose nothing visible on a page of flat colours and text, and make the
    # file several times smaller than Chromium's true-colour PNG.
    with Image.open(shot) as image:
        palette = image.convert("RGB").quantize(colors=256, dither=Image.Dither.NONE)
    palette.save(output, optimize=True)


def main(argv: list[str] | None = None) -> int:
    """Write the report's screenshot; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=HERE / "_static" / "report.png",
        help="the PNG to write (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cassia-sc-report-") as folder:
        screenshot(write_report(Path(folder)), args.output)
    size = args.output.stat().st_size
    print(f"Wrote {args.output} ({WIDTH}x{HEIGHT} pixels, {size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
