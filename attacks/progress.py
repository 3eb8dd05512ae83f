"""What an audit report says of itself: how many of its cells are done, which failed, and which
candidates of a self-tuning thief diverged (kept apart from :mod:`attacks.audit`, which writes it).

A report is rewritten after every cell; until the last one it is partial, and says so (``cells``:
done and total). A cell whose thief diverged altogether (every candidate of a search, or a plain
attack's students) is recorded as failed in the report (``failed``), never written as a finished
cell (the next run tries it again), and the audit goes on with the others; the report is
written whole, then the command ends with one line naming the failed cells.
"""

from __future__ import annotations

from nasty.errors import NastyError, one_line

from .summary import SIDE_NAMES

__all__ = ["failed_cells", "annotate", "status_lines", "raise_if_failed", "check_out"]

REPORTS = ("report.json", "report.md", "report.html")


def check_out(out, *, force: bool) -> None:
    """Refuse an ``out`` whose report files are not an audit's (the user's own report.md, a
    report.json that is not an audit report) unless ``force``: an audit rewrites them."""
    from pathlib import Path

    from nasty.safety import read_json
    from nasty.schema import AuditReport, validate

    out = Path(out).expanduser()
    present = [f for f in REPORTS if (out / f).exists() or (out / f).is_symlink()]
    if force or not present:
        return
    ours = False
    if "report.json" in present:
        try:
            validate(AuditReport, read_json(out / "report.json"), out / "report.json")  # as an audit writes it
            ours = True
        except NastyError:
            ours = False
    if not ours:
        raise NastyError(f"`out` {one_line(out)} holds {', '.join(present)} that no audit wrote (report.json is "
                         f"{'missing' if 'report.json' not in present else 'not an audit report'}); an audit "
                         f"replaces them: use another `out`, or `force` to replace them")


def failed_cells(group, error: Exception) -> dict:
    """Per path, the record of each cell of ``group`` (one attack's seeds trained together) that ``error`` ended."""
    return {c.path: {"key": c.key, "seconds": 0.0, "runs": [], "failed": one_line(str(error))[:300]} for c in group}


def annotate(report: dict, cells: list[dict], total: int) -> dict:
    """``report`` with how many cells are done of ``total``, and the failed ones."""
    failed = [{"cell": f"{c['key']['attack']}-seed{c['key']['seed']}", "error": c["failed"]}
              for c in cells if c.get("failed")]
    report["cells"] = {"done": len(cells), "total": total, "failed": len(failed)}
    if failed:
        report["failed"] = failed
    return report


def _diverged(report: dict) -> list[str]:
    """``cell (from the side, student): n of m candidates diverged`` from the picks in the report's notes."""
    out = []
    for cell, by_source in (report.get("notes") or {}).items():
        for src, note in (by_source.items() if isinstance(by_source, dict) else ()):
            picks = note.get("picks") if isinstance(note, dict) else None
            for student, p in (picks.items() if isinstance(picks, dict) else ()):
                tried = [r for r in (p.get("tried") or []) if isinstance(r, dict)] if isinstance(p, dict) else []
                bad = sum(1 for r in tried if r.get("diverged"))
                if bad:
                    side = f"from the {SIDE_NAMES[src]}" if src in SIDE_NAMES else f"{src} teacher"
                    out.append(f"{cell} ({side}, {student}): {bad} of {len(tried)} candidates diverged "
                               f"(their loss became NaN/inf) and were left out of the choice")
    return out


def status_lines(report: dict) -> list[str]:
    """Plain sentences (the caller escapes them) for the top of a report: partial, failed, diverged."""
    lines = []
    cells = report.get("cells")
    if isinstance(cells, dict) and cells.get("done", 0) < cells.get("total", 0):
        lines.append(f"PARTIAL REPORT: {cells['done']} of {cells['total']} cells done (the audit is running or was "
                     f"interrupted; the same command goes on from the finished cells)")
    for f in report.get("failed") or []:
        lines.append(f"FAILED: {f['cell']}: {f['error']} (no row of this cell in the tables)")
    return lines + _diverged(report)


def raise_if_failed(report: dict, out) -> None:
    """After the whole report is written: one line naming the cells that failed, if any did."""
    failed = report.get("failed") or []
    if failed:
        raise NastyError(f"{len(failed)} cell(s) failed ({'; '.join(f['cell'] for f in failed)[:200]}): "
                         f"{failed[0]['error'][:200]}; the report in {one_line(out)} is written without them")
