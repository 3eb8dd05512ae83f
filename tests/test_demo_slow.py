"""The full `nasty demo` (about 3.5 minutes on 2 CPU cores): what the README reports of it holds."""

import pytest


@pytest.mark.slow
def test_full_demo_holds_what_the_readme_reports(tmp_path):
    from nasty.demo import run_demo

    report = run_demo(out=tmp_path, quiet=True, device="cpu")
    assert report["teachers"]["normal"]["accuracy"] >= 98.0
    assert report["teacher_cost"] <= 1.0
    s = {(r["attack"], r["student"]): r for r in report["summary"]}
    assert len(s) == 8 and all(r["seeds"] == 3 for r in s.values())
    for student in ("tiny-cnn", "mlp"):
        assert s[("dafl", student)]["immunity"] >= 5.0
        # a label-only thief is not stopped by a teacher that keeps its top-1 answers
        assert abs(s[("hard-label", student)]["immunity"]) <= 1.0
    assert s[("deepinversion", "tiny-cnn")]["immunity"] >= 5.0
    assert s[("kd", "tiny-cnn")]["immunity"] > 0.0
