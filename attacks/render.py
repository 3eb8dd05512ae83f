"""The audit's reports as people read them: the tables ``nasty audit`` prints (:func:`format_table`),
``report.md`` (:func:`format_markdown`) and the self-contained ``report.html`` (:func:`format_html`),
from the report dict (an older report's too)."""

from __future__ import annotations

from pathlib import Path

from nasty import checkpoint as ckpt
from nasty.safety import html_text as h
from nasty.safety import md_text as md
from nasty.utility import UTILITY_HEADER, utility_cells

from . import progress
from .summary import SOURCES, worst_case


def schedule_text(settings: dict) -> str:
    """How long every student trained, in words: "1860 steps (200 epochs of 134 images)";
    an audit from before the step budget recorded epochs alone."""
    if "steps" not in settings:
        return f"{settings['epochs']} epochs"
    return f"{settings['steps']} steps ({settings['student_epochs']} epochs of {settings['samples']} images)"


UTILITY_TITLE = ("What an honest user gets from each teacher's served probabilities on the test set (NLL: lower is "
                 "better, capped at 27.63 nats a sample where a defence cut the true class off; ECE: 0 is calibrated; "
                 "top-5: the true class among the 5 most probable, or all classes if fewer):")


def _utility_rows(report: dict) -> list[list[str]]:
    """Per teacher its accuracy and served utility (none in a report from before them)."""
    t = report["teachers"]
    if not any("utility" in t[side] for side in ("normal", "nasty")):
        return []
    return [[name, str(t[side].get("defence", "-")), f"{t[side]['accuracy']:.2f}", *utility_cells(t[side].get("utility"))]
            for name, side in (("reference", "normal"), ("audited teacher", "nasty"))]


def _pm(m: dict | None) -> str:
    return "-" if m is None else f"{m['mean']:.2f} ± {m['std']:.2f}"


def _signed(v: float | None, std: float | None = None) -> str:
    return "-" if v is None else f"{v:+.2f}" + ("" if std is None else f" ± {std:.2f}")


def _worst_cells(report: dict) -> list[list[str]]:
    """The worst-case rows as table cells (an older report has none: computed from its summary)."""
    return [[r["student"], r["attack"], _pm(r["acc_from_nasty"]), _signed(r["immunity"], r.get("immunity_std")),
             _signed(r["below_scratch"]), _signed(r.get("below_label_smoothing"))]
            for r in report.get("worst_case") or worst_case(report["summary"])]


# the audit's two sides, named generically: the reference (``teachers.normal`` in report.json, the model as
# released) and the audited teacher (``teachers.nasty``: a nasty teacher or any defended model)
WORST_HEADER = ["student", "worst attack", "from teacher", "immunity", "below scratch", "below label smoothing"]
TABLE_HEADER = ["attack", "student", "scratch", "label smoothing", "from reference", "from teacher", "immunity",
                "below scratch", "below label smoothing"]


UTILITY_ROWS_HEADER = ["teacher", "defence", "accuracy", *UTILITY_HEADER]
BEYOND_HEADER = ["student", "teacher: best on outputs", "on labels alone", "adds", "reference: best on outputs",
                 "on labels alone", "adds"]
BEYOND_TITLE = ("What the outputs add to the labels (the strongest thief that reads a teacher's outputs, minus the "
                "best student from labels alone: scratch, label smoothing or a thief of the top-1 answers; a "
                "defence of the outputs can act on this only):")


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


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table; every cell escaped (``|`` and markup), since names can come from files."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(md(c) for c in r) + " |" for r in rows])


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
                    side = "teacher" if src == "nasty" else "reference"
                    out.setdefault(attack, {}).setdefault(side, {}).setdefault(str(student), []).append((int(seed), *pick))
    for sides in out.values():
        for students in sides.values():
            for rows in students.values():
                rows.sort()
    return out


def _chosen_text(report: dict, esc) -> list[tuple[str, list[str]]]:
    """Per attack that tuned itself: a title and its bullets, names escaped by ``esc``."""
    said = []
    for attack, sides in chosen(report).items():
        bullets = [f"from the {side}: " + "; ".join(
            f"{esc(student)} " + ", ".join(pick + (f" ({tied} of {n} tied)" if tied > 1 else "")
                                           for _, pick, tied, n in rows)
            for student, rows in sides[side].items()) for side in ("teacher", "reference") if side in sides]
        if any(1 < tied == n for ss in sides.values() for rows in ss.values() for _, _, tied, n in rows):
            bullets.append("where every candidate tied, the search saw no signal (too few images or steps to tell "
                           "them apart): that pick is the first pair, not a choice.")
        said.append((f"What {esc(attack)} chose, tau/alpha per seed (tied: candidates that shared the best "
                     f"validation score; the first is taken):", bullets))
    return said


def _chosen_lines(report: dict) -> list[str]:
    return [line for title, bullets in _chosen_text(report, md) for line in ("", title, *(f"- {b}" for b in bullets))]


def format_table(report: dict) -> str:
    """The worst case per student, then the whole summary, as markdown tables (what ``nasty
    audit`` prints), then what the attacks that tune themselves chose. Reads older reports too
    (no label-smoothing baseline, no worst case)."""
    beyond, served = _beyond_cells(report), _utility_rows(report)
    return "\n".join(["Worst case per student (the attack that gets most from the audited teacher):", "",
                      *_markdown(WORST_HEADER, _worst_cells(report)), "",
                      *([BEYOND_TITLE, "", *_markdown(BEYOND_HEADER, beyond), ""] if beyond else []),
                      *([UTILITY_TITLE, "", *_markdown(UTILITY_ROWS_HEADER, served), ""] if served else []),
                      "Every attack:", "", *_markdown(TABLE_HEADER, _table_cells(report)), *_chosen_lines(report)])


def format_markdown(report: dict) -> str:
    t, s = report["teachers"], report["settings"]
    seeds = sorted({r["seed"] for r in report["runs"]})
    return "\n".join([
        f"# KD-immunity audit: {md(report['dataset'])}",
        "",
        *(f"**{md(line)}**\n" for line in progress.status_lines(report)),
        f"- reference: {md(t['normal']['arch'])}, test accuracy {t['normal']['accuracy']:.2f}% "
        f"(defence {md(t['normal'].get('defence', 'none'))})",
        f"- audited teacher: {md(t['nasty']['arch'])}, test accuracy {t['nasty']['accuracy']:.2f}% "
        f"(defence {md(t['nasty'].get('defence', ''))}); teacher cost {report['teacher_cost']:+.2f} points",
        f"- students: {md(', '.join(s['students']))}; seeds {md(seeds)}; {md(schedule_text(s))}, batch "
        f"{md(s['batch_size'])}, lr {md(s['lr'])}; KD alpha {md(s['alpha'])}, tau {md(s['tau'])}; attacker's share of the training set "
        f"{report['train_fraction']:g}",
        "",
        "Final-epoch test accuracy (%), mean ± std over seeds. immunity = from reference - from teacher "
        "(large is good; ± the spread of the per-seed difference); below scratch = scratch - from teacher, "
        "below label smoothing = label smoothing - from teacher (positive: distilling the audited teacher "
        "is worse than training without a teacher, plainly or with smoothed labels).",
        "",
        format_table(report),
        "",
        f"{report['seconds']:.1f} s of training in {len(report['runs'])} rows.",
        "",
    ])


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


def _html_rows(header: list[str], rows: list[list[str]], *, signed_from: int) -> str:
    """Table rows; the columns from ``signed_from`` on are margins, green when >= 0, red below."""

    def cell(i, c):
        if i < signed_from:
            return f"<td>{h(c)}</td>"
        return f"<td class='{'bad' if c.startswith('-') and c != '-' else 'good'}'>{h(c)}</td>"

    head = "<tr>" + "".join(f"<th>{h(name)}</th>" for name in header) + "</tr>"
    return head + "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)


def format_html(report: dict, images: dict[str, str]) -> str:
    """One self-contained page: ``images`` maps a section to a base64 PNG."""
    t, s = report["teachers"], report["settings"]
    worst = _html_rows(WORST_HEADER, _worst_cells(report), signed_from=3)
    beyond = _beyond_cells(report)
    beyond = (f"<section id='beyond-labels'><h2>Beyond the labels</h2><p>{h(BEYOND_TITLE)}</p>"
              f"<table>{_html_rows(BEYOND_HEADER, beyond, signed_from=7)}</table></section>\n") if beyond else ""
    served = _utility_rows(report)
    beyond += (f"<section id='utility'><h2>Utility for honest users</h2><p>{h(UTILITY_TITLE)}</p>"
               f"<table>{_html_rows(UTILITY_ROWS_HEADER, served, signed_from=len(UTILITY_ROWS_HEADER))}</table>"
               f"</section>\n") if served else ""
    rows = _html_rows(TABLE_HEADER, _table_cells(report), signed_from=6)
    sections = {
        "logits": ("Softened outputs (logit peaks)",
                   "softmax(z/tau) of test images and, over the test set, the mean sorted profile and the number of "
                   "peaks (classes within half of the top probability). A nasty teacher spreads its probability "
                   "over wrong classes while keeping the right one on top."),
        "tsne": ("t-SNE of features and logits",
                 "Penultimate features and logits of the test set, coloured by class."),
        "images": ("What the data-free attacks synthesised",
                   "Images DAFL's generator and DeepInversion made from each teacher while the audit trained "
                   "(the first seed's cell), by the teacher's class."),
    }
    figures = "".join(
        f"<section id='{k}'><h2>{title}</h2><p>{text}</p><img alt='{k}' src='data:image/png;base64,{images[k]}'>"
        f"</section>" for k, (title, text) in sections.items() if k in images)
    seeds = sorted({r["seed"] for r in report["runs"]})
    chosen_ = "".join(f"<section class='chosen'><p>{title}</p><ul>{''.join(f'<li>{b}</li>' for b in bullets)}</ul>"
                      f"</section>\n" for title, bullets in _chosen_text(report, h))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>KD-immunity audit: {h(report['dataset'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
th {{ background: #f3f3f3; }} td {{ text-align: right; }} td:first-child, td:nth-child(2) {{ text-align: left; }}
.good {{ color: #1a7f37; }} .bad {{ color: #b42318; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>KD-immunity audit: {h(report['dataset'])}</h1>
{''.join(f"<p class='bad'><b>{h(line)}</b></p>" for line in progress.status_lines(report))}
<section id="worst-case"><h2>Worst case per student</h2>
<p>The attack that gets most from the audited teacher (highest mean final-epoch test accuracy of its students):
the defence is as good as this row. Immunity ± the spread over seeds of the per-seed difference.</p>
<table>{worst}</table></section>
{beyond}<section id="teachers"><h2>Teachers</h2><table>
<tr><th>teacher</th><th>arch</th><th>test accuracy (%)</th><th>defence</th><th>omega</th><th>tau</th></tr>
<tr><td>reference</td><td>{h(str(t['normal']['arch']))}</td><td>{t['normal']['accuracy']:.2f}</td>
<td>{h(t['normal'].get('defence', 'none'))}</td><td></td><td></td></tr>
<tr><td>audited</td><td>{h(str(t['nasty']['arch']))}</td><td>{t['nasty']['accuracy']:.2f}</td>
<td>{h(t['nasty'].get('defence', ''))}</td><td>{h(t['nasty']['omega'])}</td><td>{h(t['nasty']['tau'])}</td></tr></table>
<p>Teacher cost (reference - audited): <b>{report['teacher_cost']:+.2f}</b> points.</p></section>
<section id="immunity"><h2>Immunity</h2>
<p>Final-epoch test accuracy (%) of students, mean ± std over seeds {h(seeds)}; {h(schedule_text(s))}, KD alpha
{h(s['alpha'])}, tau {h(s['tau'])}; the attacker holds {report['train_fraction']:g} of the training set.
immunity = from reference - from teacher; below scratch = scratch - from teacher; below label smoothing =
label smoothing - from teacher.</p>
<table>{rows}</table></section>
{chosen_}{figures}
<p>Machine-readable: report.json. nasty {h(str(report.get('nasty_version', '')))}.</p>
</body></html>
"""
