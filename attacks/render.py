"""The audit's reports as people read them: the tables ``nasty audit`` prints (:func:`format_table`),
``report.md`` (:func:`format_markdown`) and the self-contained ``report.html`` (:func:`format_html`),
from the report dict (an older report's too), through the Jinja2 templates in ``attacks/templates/``.

Both template environments escape every value they are given: report.html with Jinja2's HTML
autoescaping (control characters escaped first, :func:`nasty.errors.one_line`), report.md and the
printed tables with markdown's (``|`` and markup, :func:`nasty.safety.md_text`): names reach a
report from files that other people made. Only the templates' own text is left as it is.

The audit's two sides are named as the reports say them: the *reference* (``teachers.normal`` in
report.json, the model as released) and the *teacher* audited (``teachers.nasty``: a nasty teacher
or any defended model); :class:`nasty.schema.AuditReport` documents the mapping.
"""

from __future__ import annotations

import functools
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from nasty import checkpoint as ckpt
from nasty.errors import one_line
from nasty.safety import md_text, read_json
from nasty.schema import AuditReport, validate
from nasty.utility import UTILITY_HEADER, utility_cells

from . import progress
from .summary import REFERENCE, SIDE_NAMES, SOURCES, TEACHER, worst_case

WORST_HEADER = ["student", "worst attack", "from teacher", "immunity", "below scratch", "below label smoothing"]
TABLE_HEADER = ["attack", "student", "scratch", "label smoothing", "from reference", "from teacher", "immunity",
                "below scratch", "below label smoothing"]
UTILITY_ROWS_HEADER = ["teacher", "defence", "accuracy", *UTILITY_HEADER]
BEYOND_HEADER = ["student", "teacher: best on outputs", "on labels alone", "adds", "reference: best on outputs",
                 "on labels alone", "adds"]


def schedule_text(settings: dict) -> str:
    """How long every student trained, in words: "1860 steps (200 epochs of 134 images)";
    an audit from before the step budget recorded epochs alone."""
    if "steps" not in settings:
        return f"{settings['epochs']} epochs"
    return f"{settings['steps']} steps ({settings['student_epochs']} epochs of {settings['samples']} images)"


def _utility_rows(report: dict) -> list[list[str]]:
    """Per teacher its accuracy and served utility (none in a report from before them)."""
    t = report["teachers"]
    if not any("utility" in t[side] for side in SOURCES):
        return []
    return [[name, str(t[side].get("defence", "-")), f"{t[side]['accuracy']:.2f}", *utility_cells(t[side].get("utility"))]
            for name, side in (("reference", REFERENCE), ("audited teacher", TEACHER))]


def _pm(m: dict | None) -> str:
    return "-" if m is None else f"{m['mean']:.2f} ± {m['std']:.2f}"


def _signed(v: float | None, std: float | None = None) -> str:
    return "-" if v is None else f"{v:+.2f}" + ("" if std is None else f" ± {std:.2f}")


def _worst_cells(report: dict) -> list[list[str]]:
    """The worst-case rows as table cells (an older report has none: computed from its summary)."""
    return [[r["student"], r["attack"], _pm(r["acc_from_nasty"]), _signed(r["immunity"], r.get("immunity_std")),
             _signed(r["below_scratch"]), _signed(r.get("below_label_smoothing"))]
            for r in report.get("worst_case") or worst_case(report["summary"])]


def _beyond_cells(report: dict) -> list[list[str]]:
    """The beyond-labels rows as table cells (none in a report from before them)."""
    def at(x):
        return f"{x['attack']} {x['accuracy']:.2f}"
    return [[r["student"], *(c for side in ("teacher", "reference")
                             for c in (at(r[side]["outputs"]), at(r[side]["labels"]), _signed(r[side]["adds"])))]
            for r in report.get("beyond_labels") or []]


def _table_cells(report: dict) -> list[list[str]]:
    return [[r["attack"], r["student"], _pm(r["acc_scratch"]), _pm(r.get("acc_label_smoothing")),
             _pm(r["acc_from_normal"]), _pm(r["acc_from_nasty"]), _signed(r["immunity"], r.get("immunity_std")),
             _signed(r["below_scratch"]), _signed(r.get("below_label_smoothing"))] for r in report["summary"]]


def _pick(p) -> tuple[str, int, int] | None:
    """``("tau/alpha", candidates tied at the best validation score, candidates)`` of one pick."""
    if not isinstance(p, dict) or not all(isinstance(p.get(k), (int, float)) for k in ("tau", "alpha")):
        return None
    tried = [r.get("val_accuracy") for r in p.get("tried") or [] if isinstance(r, dict)]
    return f"{p['tau']:g}/{p['alpha']:g}", max(1, tried.count(p.get("val_accuracy"))), len(tried)


def chosen(report: dict) -> dict[str, dict[str, dict[str, list]]]:
    """What the attacks that tune themselves chose (kd-sweep's picks), from the report's notes:
    ``{attack: {"teacher"|"reference": {student: [(seed, "tau/alpha", tied, candidates), ...]}}}``,
    seeds in order; ``tied`` counts the candidates that shared the best validation score (the first
    of them is taken, so a pick with every candidate tied is no choice at all)."""
    out = {}
    for cell, by_source in (report.get("notes") or {}).items():
        attack, _, seed = str(cell).rpartition("-seed")
        for src, note in (by_source.items() if isinstance(by_source, dict) and seed.isdigit() else ()):
            picks = note.get("picks") if isinstance(note, dict) else None
            for student, p in (picks.items() if isinstance(picks, dict) and src in SOURCES else ()):
                if (pick := _pick(p)) is not None:
                    side = SIDE_NAMES[src]
                    out.setdefault(attack, {}).setdefault(side, {}).setdefault(str(student), []).append((int(seed), *pick))
    for sides in out.values():
        for students in sides.values():
            for rows in students.values():
                rows.sort()
    return out


def _chosen_view(report: dict) -> list[dict]:
    """Per attack that tuned itself, what the templates say of it: its sides (the teacher's first),
    each side's students and picks, and whether some pick had every candidate tied (no signal)."""
    return [{"attack": attack,
             "sides": [(side, list(sides[side].items())) for side in ("teacher", "reference") if side in sides],
             "no_signal": any(1 < tied == n for ss in sides.values() for rows in ss.values() for _, _, tied, n in rows)}
            for attack, sides in chosen(report).items()]


def _context(report: dict) -> dict:
    """What every template is given: the report, its two sides by name, and its tables as cells."""
    return {"report": report, "reference": report["teachers"][REFERENCE], "teacher": report["teachers"][TEACHER],
            "settings": report["settings"], "schedule": schedule_text(report["settings"]),
            "seeds": sorted({r["seed"] for r in report["runs"]}), "status": progress.status_lines(report),
            "worst": _worst_cells(report), "beyond": _beyond_cells(report), "served": _utility_rows(report),
            "rows": _table_cells(report), "chosen": _chosen_view(report),
            "WORST_HEADER": WORST_HEADER, "TABLE_HEADER": TABLE_HEADER, "BEYOND_HEADER": BEYOND_HEADER,
            "UTILITY_ROWS_HEADER": UTILITY_ROWS_HEADER}


def _markdown_value(value):
    """Markdown's autoescape: a value escaped once (``|`` and markup); the templates' own output (a
    macro's, marked safe) as it is."""
    return value if isinstance(value, Markup) else Markup(md_text(value))


def _html_value(value):
    """Before Jinja2's HTML escaping: a value on one line, control characters escaped."""
    return value if isinstance(value, Markup) else one_line(value)


@functools.cache
def _environment(markdown: bool) -> Environment:
    """The templates, found in the installed package; every value escaped for markdown or HTML."""
    return Environment(loader=PackageLoader("attacks", "templates"), autoescape=True, undefined=StrictUndefined,
                       finalize=_markdown_value if markdown else _html_value, trim_blocks=True, lstrip_blocks=True,
                       keep_trailing_newline=True)


def format_table(report: dict) -> str:
    """The worst case per student, then the whole summary, as markdown tables (what ``nasty
    audit`` prints), then what the attacks that tune themselves chose. Reads older reports too
    (no label-smoothing baseline, no worst case)."""
    return _environment(True).get_template("table.md.j2").render(_context(report)).rstrip("\n")


def format_markdown(report: dict) -> str:
    """``report.md``: the teachers and settings, then :func:`format_table`'s tables."""
    return _environment(True).get_template("report.md.j2").render(_context(report))


def write_report(out: Path, report: dict) -> None:
    """``report.json`` (the dict as it is, once :class:`~nasty.schema.AuditReport` accepts it) and
    ``report.md`` in ``out``, each written atomically."""
    validate(AuditReport, report, out / "report.json")
    ckpt.write_json(out / "report.json", report)
    ckpt.atomic_write(out / "report.md", lambda p: Path(p).write_text(format_markdown(report)))


def read_report(path) -> AuditReport:
    """An audit's ``report.json`` as :class:`~nasty.schema.AuditReport`: the sides named reference and
    teacher, the fields an older audit did not write at their defaults; one that does not fit is one line."""
    return AuditReport.model_validate(validate(AuditReport, read_json(path), path))


def _write_html(report, out: Path, models, data, *, tau, grids, quiet) -> None:
    """report.html: the teachers, the table, and the diagnostics figures, images embedded."""
    import base64
    import io

    from nasty.diagnostics import audit_figures, save_figure

    if not quiet:
        from tqdm.auto import tqdm

        tqdm.write("plotting logit peaks, t-SNE and synthesised images for report.html")
    figures = audit_figures(models, data, tau=tau, grids=grids)
    embedded = {}
    for name, (fig, numbers) in figures.items():
        save_figure(fig, out / f"{name}.png", numbers=numbers)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        embedded[name] = base64.b64encode(buf.getvalue()).decode()
    ckpt.atomic_write(out / "report.html", lambda p: Path(p).write_text(format_html(report, embedded)))


def format_html(report: dict, images: dict[str, str]) -> str:
    """One self-contained page: ``images`` maps a section to a base64 PNG."""
    return _environment(False).get_template("report.html.j2").render(_context(report), images=images)
