"""The documentation stays true: a short README, links that resolve, results files that exist, short paths,
a troubleshooting table that covers every bad-input case, the README's one-stage code equal to the code that
runs, no issue numbers."""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"

FENCE = re.compile(r"^```.*?^```", re.S | re.M)  # fenced code blocks: their text is code, not links
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(path: Path) -> str:
    """A markdown file without its fenced code blocks."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", prose(path), re.M)}


def test_readme_is_a_front_door_of_at_most_160_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("page", [README, REPO / "teachers" / "README.md", *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_at_a_file_that_exists(page):
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http(s), mailto: not checked here (no network)
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no {file.relative_to(REPO) if file.is_relative_to(REPO) else file})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {broken}"


CITING = [README, REPO / "teachers" / "README.md", *DOCS, *sorted((REPO / "recipes").glob("*.yaml"))]
RESULTS_PATH = re.compile(r"benchmarks/results/[\w./*<>-]*")  # in links, code spans and comments alike
MAX_PATH = 120  # characters of a path in the repository: clones and archives stay within every OS's limits


@pytest.mark.parametrize("page", CITING, ids=lambda p: str(p.relative_to(REPO)))
def test_every_results_file_a_page_names_exists(page):
    missing = []
    for cited in RESULTS_PATH.findall(page.read_text(encoding="utf-8")):
        pattern = re.sub(r"<[^>]*>", "*", cited.rstrip(".")).rstrip("/")  # sweep_students_<round>.md: a pattern
        if not any(REPO.glob(pattern)):
            missing.append(cited)
    assert not missing, f"{page.relative_to(REPO)} names results files that do not exist: {missing}"


def repository_files() -> list:
    """The files the repository holds: tracked, or new and not ignored (about to be added), that exist."""
    try:
        done = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                              capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of the repository's files")
    return [p for p in done.stdout.decode("utf-8").split("\0") if p and (REPO / p).is_file()]


def test_no_path_in_the_repository_exceeds_120_characters():
    files = repository_files()
    assert any(p.startswith("benchmarks/results/") for p in files), "expected the committed results in the list"
    long = [f"{len(p)}: {p}" for p in files if len(p) > MAX_PATH]
    assert not long, f"paths over {MAX_PATH} characters (name runs by a short label): {long}"


def test_results_keep_no_raw_run_folders():
    # a comparison keeps results.md/.csv, the plot and runs.jsonl.gz; its runs/ (weights, checkpoints) stays local
    folders = sorted({p.split("/runs/")[0] for p in repository_files() if p.startswith("benchmarks/results/")
                      and "/runs/" in p})
    assert not folders, f"raw run folders under benchmarks/results (keep runs.jsonl.gz instead): {folders}"


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in LINK.findall(prose(README))}
    missing = [p.name for p in DOCS if p.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"


# Parts of a bad-input message that vary with the input: quoted values, {TMP} paths, anything with a digit.
VARIABLE = re.compile(r"'[^']*'|\{\w+\}\S*|\S*\d\S*")


def message_pattern(fragment: str) -> re.Pattern:
    """The fixed words of a message, in order, with anything (a placeholder such as 'X' or ...) between them."""
    pieces = [p.strip() for p in VARIABLE.split(fragment)]
    pieces = [p for p in pieces if re.search(r"[A-Za-z]", p)]
    assert pieces, f"message fragment {fragment!r} has no fixed words to look for"
    return re.compile(r"(?<![\w.])" + ".*?".join(r"\s+".join(map(re.escape, p.split())) for p in pieces))


def troubleshooting_rows() -> list:
    """The cells of the troubleshooting table, checked to be a well-formed markdown table."""
    lines = [line.strip() for line in TROUBLESHOOTING.read_text(encoding="utf-8").splitlines()
             if line.strip().startswith("|")]
    assert len(lines) >= 3, "docs/troubleshooting.md has no table"
    rows = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    header, separator, body = rows[0], rows[1], rows[2:]
    assert all(re.fullmatch(r":?-{3,}:?", cell) for cell in separator), f"bad separator row: {lines[1]}"
    for line, row in zip(lines[2:], body):
        assert len(row) == len(header) == len(separator), f"row has {len(row)} cells, header {len(header)}: {line}"
        assert all(row), f"empty cell in: {line}"
    return body


def test_message_pattern_keeps_fixed_words_and_skips_values():
    pattern = message_pattern("checkpoint '{TMP}/nope.safetensors' not found")
    assert pattern.search("checkpoint '...' not found")
    assert not pattern.search("checkpoint '...' cannot be read")
    assert message_pattern("k must be >= 1, got 0").search("k must be >= 1, got X")
    assert not message_pattern("k must be >= 1, got 0").search("batch_size must be >= 2")


def test_troubleshooting_table_covers_every_bad_input_case():
    from test_api import API_BAD, CLI_BAD  # tests/ is on sys.path under pytest, as for conftest
    from test_bad_input import CASES

    messages = [row[0].replace("`", "") for row in troubleshooting_rows()]
    cases = {**CASES, **CLI_BAD, **API_BAD}
    missing = [f"{case}: {fragment!r}" for case, (_args, fragment) in cases.items()
               if not any(message_pattern(fragment).search(m) for m in messages)]
    assert not missing, ("docs/troubleshooting.md has no row whose message (first column) matches these "
                         f"cases of tests/test_bad_input.py and tests/test_api.py; add one each: {missing}")


def test_readme_shows_the_one_stage_step_as_it_is_in_the_code():
    source = (REPO / "dfkd" / "onestage.py").read_text(encoding="utf-8")
    func = next(node for node in ast.parse(source).body
                if isinstance(node, ast.FunctionDef) and node.name == "one_stage_step")
    lines = source.splitlines()
    body = func.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):  # drop the docstring only
        expected = lines[func.lineno - 1:body[0].lineno - 1] + lines[body[0].end_lineno:func.end_lineno]
    else:
        expected = lines[func.lineno - 1:func.end_lineno]
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
    shown = next((b.rstrip("\n").splitlines() for b in blocks if b.startswith("def one_stage_step(")), None)
    assert shown is not None, "README.md has no ```python block starting with def one_stage_step("
    assert shown == expected, "README.md's one_stage_step differs from dfkd/onestage.py: copy the function again"


ISSUE_REF = re.compile(r"\bissues?\s*#?\d+|\bissue's\b|\bthe issue\b|\bissue (?:target|asks|asked|expects)\b"
                       r"|(?<![\w&/#])#\d+\b", re.I)
USER_FACING = [README, REPO / "teachers" / "README.md", *DOCS,
               *sorted((REPO / "recipes").glob("*.yaml")), *sorted((REPO / "dfkd").rglob("*.py"))]


@pytest.mark.parametrize("path", USER_FACING, ids=lambda p: str(p.relative_to(REPO)))
def test_no_issue_tracker_references(path):
    hits = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if ISSUE_REF.search(line)]
    assert not hits, "state targets and facts, not issue numbers:\n" + "\n".join(hits)
