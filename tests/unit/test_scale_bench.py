"""bench/scale_bench.py's report: targets compared with the right figures, runs added newest first
to their own section without touching the rest of the document."""

from __future__ import annotations

from pathlib import Path

from bench.report import insert_into
from bench.scale_bench import MARKER, SECTION, Density, Results, Side, verdicts


def test_verdicts_use_p50_and_the_density_figures() -> None:
    r = Results(sides={"fast": Side(resume=[9.0, 9.5, 40.0]), "echo": Side(resume=[16.0, 17.0, 18.0])},
                density=Density(functions=200, daemon_rss_after=72.0, list_ms=[1.0, 2.0, 90.0], listed=200))
    out = verdicts(r)
    assert out[0].startswith("MET    fast") and "9.50 ms" in out[0]
    assert out[1].startswith("MISSED echo") and "17.00 ms" in out[1]
    assert out[2].startswith("MET    daemon + log helper RSS with 200 paused functions = 72.0 MiB")
    assert out[3].startswith("MET    GET /system/functions with 200 functions p50 = 2.0 ms")
    assert verdicts(Results(sides={}, density=Density(functions=0))) == []


def test_runs_go_to_their_own_section_newest_first(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Runs\n\n<!-- other runs -->\n\n### core run\n")
    insert_into(doc, "### first\n", MARKER, SECTION)
    insert_into(doc, "### second\n", MARKER, SECTION)
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\n## Runs\n\n<!-- other runs -->\n\n### core run\n")
    assert text.count(SECTION) == 1 and text.count(MARKER) == 1
    assert text.index(SECTION) < text.index("### second") < text.index("### first")
