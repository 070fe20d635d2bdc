"""The static report page of ``surfflows report``: written from a real tiny benchmark, and
rendered by headless Chromium with every image loaded and no console error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from chromium_support import CHROMIUM, IMAGES_JS, Chromium
from test_evaluate_builders import tiny_set  # noqa: F401  (the fixture: tiny Ni, Pt, Rh slabs)
from typer.testing import CliRunner

from surfflows.cli import app
from surfflows.io.registry import register_packaged
from surfflows.stores import get_job_store

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_report_page_loads_offline_with_every_image(tiny_set, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(ROOT)  # a clone: benchmarks/results joins the page
    runner = CliRunner()
    for args in (
        ["evaluate", "--reference", str(tiny_set), "--mode", "single_point"],
        ["build"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    register_packaged("chgnet-surf", get_job_store())
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out / "index.html"
    assert f"wrote {page}" in result.output.replace("\n", "")

    html = page.read_text()
    for section in ("benchmark", "leaderboard", "figures", "models", "benchmarks"):
        assert f'id="{section}"' in html
    assert "tiny_metals" in html and "chgnet-0.3.0" in html
    assert "chgnet-surf" in html  # its card and its registered checkpoint
    links = re.findall(r'(?:src|href)="([^"#][^"]*)"', html)
    local = [link for link in links if not link.startswith("data:")]
    assert not [link for link in local if re.match(r"[a-z]+://", link)]  # nothing online
    assert all((out / link).is_file() for link in local), [
        link for link in local if not (out / link).is_file()
    ]
    assert any(link.startswith("parity_") for link in local)
    assert any(link.startswith("figures/results/relax_throughput") for link in local)

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with Chromium(tmp_path / "chromium-profile") as browser:
        session = browser.open(page.as_uri())
        images = browser.evaluate(IMAGES_JS, session)
        assert len(images) == len({link for link in local if link.endswith(".png")})
        assert all(image["complete"] and image["width"] > 0 for image in images), images
        assert browser.console_errors() == []
