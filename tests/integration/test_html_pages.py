"""`pgo show --html` and `pgo analyze --html`: one self-contained page with
the profile and its analysis, checked as text and in a real headless
browser (Debian's chromium): it renders, its plots are there, and nothing
is cut off at a laptop's width."""

import re
import shutil
import subprocess

import pytest


def check_page(text):
    assert text.startswith("<!doctype html>")
    for heading in ("<h2>Profile</h2>", "Top sites by bytes", "<h2>Analysis</h2>",
                    "The config's rules", "Sites: pattern and strategy"):
        assert heading in text, heading
    images = re.findall(r'<img alt="([^"]*)" src="([^"]{0,30})', text)
    assert len(images) >= 3, images                         # live bytes, GC, icicle
    assert all(src.startswith("data:image/png;base64,") for _, src in images)
    assert "http://" not in text and "https://" not in text  # opens with no network


def test_analyze_and_show_write_the_same_kind_of_page(example_bundles, pgo_cli, tmp_path):
    examples, pgo = example_bundles, pgo_cli
    a = pgo("analyze", str(examples / "pipeline"), "-o", "c.toml", "-q", "--html", "a.html",
            cwd=tmp_path)
    assert a.returncode == 0, a.stderr
    s = pgo("show", str(examples / "pipeline"), "--html", "s.html", cwd=tmp_path)
    assert s.returncode == 0, s.stderr
    page_a = (tmp_path / "a.html").read_text()
    page_s = (tmp_path / "s.html").read_text()
    for page in (page_a, page_s):
        check_page(page)
        # The rule and its reason, with the numbers the config file has.
        assert "numpy 1.0 MiB..up -&gt; cache" in page and "headroom_percent = " in page
        assert "__main__:threshold:30" in page
    records = pgo("analyze", str(examples / "records"), "-o", "r.toml", "-q", "--html", "r.html",
                  cwd=tmp_path)
    assert records.returncode == 0, records.stderr
    page_r = (tmp_path / "r.html").read_text()
    check_page(page_r)
    assert "GC plan" in page_r and "thresholds (0, 0, 0)" in page_r
    assert "every GC pause: when, how long, which generation" in page_r


def test_the_page_renders_in_a_real_browser_and_fits_a_laptop_screen(example_bundles, pgo_cli,
                                                                   tmp_path):
    examples, pgo = example_bundles, pgo_cli
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); .ci/run installs it")
    assert pgo("show", str(examples / "pipeline"), "--html", "s.html",
               cwd=tmp_path).returncode == 0
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1400,2600", f"--screenshot={shot}", (tmp_path / "s.html").as_uri()],
        capture_output=True, text=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 50_000, proc.stderr[-2000:]
    import matplotlib.image as mpimg
    import numpy as np
    px = mpimg.imread(shot)[..., :3]
    assert px.shape[1] == 1400
    # Drawn: plots and tables make many non-white pixels ...
    ink = (px < 0.9).any(axis=2)
    assert ink.mean() > 0.03
    # ... and nothing runs off the right edge (the old bench page's four
    # plots were one 1850 px image, cut off at 1400).
    assert not ink[:, -12:].any()
    # The plots are there: some rows hold the line plot's blue.
    blue = (np.abs(px - np.array([0.12, 0.47, 0.71])) < 0.08).all(axis=2)
    assert blue.sum() > 200
