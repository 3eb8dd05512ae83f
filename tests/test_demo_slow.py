"""The full `nasty demo` (about 4 minutes on 2 CPU cores): what docs/results-digits.md reports of it holds."""

import pytest


@pytest.mark.slow
def test_full_demo_holds_what_the_readme_reports(tmp_path):
    from nasty.app.demo import ATTACKS, run_demo

    report = run_demo(out=tmp_path, quiet=True, device="cpu")
    assert report["teachers"]["normal"]["accuracy"] >= 98.0
    assert report["teacher_cost"] <= 1.0  # the default budget: 1 point of validation accuracy
    s = {(r["attack"], r["student"]): r for r in report["summary"]}
    assert {a for a, _ in s} == set(ATTACKS) and len(s) == 8 and all(r["seeds"] == 3 for r in s.values())
    for student in ("tiny-cnn", "mlp"):
        # a label-only thief is not stopped by a teacher that keeps its top-1 answers
        assert abs(s[("hard-label", student)]["immunity"]) <= 1.0
        assert abs(s[("hard-label-sweep", student)]["immunity"]) <= 1.0
    assert s[("kd", "tiny-cnn")]["immunity"] > 0.0  # the defender's own temperature is resisted a little
    # the worst case is reported per student, and the thief who picks its temperature is in it or near it
    worst = {w["student"]: w for w in report["worst_case"]}
    assert set(worst) == {"tiny-cnn", "mlp"}
    for student, w in worst.items():
        assert w["acc_from_nasty"]["mean"] >= s[("kd-sweep", student)]["acc_from_nasty"]["mean"]
        assert s[("kd-sweep", student)]["acc_from_nasty"]["mean"] >= s[("kd", student)]["acc_from_nasty"]["mean"] - 1.0
