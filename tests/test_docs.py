"""The README is the manual and docs/ the lab notebook: the README stays short, runs the same test
command as .ci/run, and every link in either resolves to a file and a heading; no machine paths."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


def test_the_readme_is_short_and_runs_the_test_command_of_ci():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    command = "python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[test]' && python -m pytest"
    assert command in readme.splitlines()
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_link_resolves_to_a_file_and_a_heading():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists() or (anchor and (dest.suffix != ".md" or anchor not in anchors(dest))):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_no_machine_paths():
    found = [(page.name, m) for page in PAGES
             for m in re.findall(r"(?<![\w.])(?:/tmp|/work|/home|/root|/Users|~)/\S*", page.read_text())]
    assert found == []
