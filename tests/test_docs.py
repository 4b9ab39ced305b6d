"""The README and docs/ stay true to the code.

Every relative link and image resolves (anchors included), every `make TARGET` names a target of
the Makefile, every `m2s COMMAND --option` names a registered subcommand and one of its options,
every repository path and `m2s.` name exists, and the README stays a short front page. Reads the
Markdown and introspects the typer app; runs nothing else, so it takes a second or two.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
from functools import cache
from pathlib import Path

import pytest
import typer.core
import typer.main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# Paths into the repository named anywhere in the text; `*` globs must match something.
REPO_PATH = re.compile(
    r"(?<![\w./~-])((?:benchmarks|scripts|pipelines|data_manifests|tests|m2s|cli|docs|\.ci)/[\w.*-]+(?:/[\w.*-]+)*)"
)
DOTTED = re.compile(r"(?<![\w./])(m2s(?:\.[A-Za-z_]\w*)+)")
FROM_IMPORT = re.compile(r"from\s+(m2s(?:\.\w+)*)\s+import\s+([\w, ]+)")
SHELL_SEPARATORS = re.compile(r"&&|\|\||;")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def _split_fences(text: str) -> tuple[str, list[str]]:
    """(text outside fenced blocks, the fenced blocks' contents)."""
    prose: list[str] = []
    blocks: list[str] = []
    current: list[str] | None = None
    for line in text.split("\n"):
        if FENCE.match(line.lstrip()):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
            continue
        (prose if current is None else current).append(line)
    assert current is None, "unclosed code fence"
    return "\n".join(prose), blocks


def _code_lines(text: str) -> list[str]:
    """Every shell-like line of code: fenced lines (backslash continuations joined) and inline spans."""
    prose, blocks = _split_fences(text)
    lines: list[str] = []
    for block in blocks:
        # A backslash-newline, or an indented line after a command line, continues that command.
        joined: list[str] = []
        for line in block.replace("\\\n", " ").split("\n"):
            if joined and joined[-1].strip() and not joined[-1].lstrip().startswith("#") and line[:1].isspace():
                joined[-1] += " " + line.strip()
            else:
                joined.append(line)
        lines += joined
    lines += [" ".join(m.group(2).split()) for m in INLINE_CODE.finditer(prose)]
    # A `#` after whitespace starts a shell comment; commands never carry one inside a word.
    return [re.sub(r"(^|\s)#.*$", "", line) for line in lines]


def _tokens(s: str) -> list[str]:
    try:
        return shlex.split(s)
    except ValueError:  # an unbalanced quote in a prose span: plain words are enough here
        return s.split()


def _segments(line: str) -> list[str]:
    return [seg.strip() for seg in SHELL_SEPARATORS.split(line) if seg.strip()]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def _anchors(path: Path) -> frozenset[str]:
    prose, _ = _split_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    anchors = set()
    for line in prose.split("\n"):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = _slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        anchors.add(base if n == 0 else f"{base}-{n}")
    return frozenset(anchors)


@cache
def _make_targets() -> frozenset[str]:
    """Targets of the Makefile and pipelines/*.mk, from make's own database (nothing is run)."""
    out = subprocess.run(
        ["make", "-pRrq", "-C", str(ROOT), "--no-print-directory"],
        capture_output=True, text=True, timeout=60,
    ).stdout
    files = out.split("\n# Files\n", 1)[1]
    targets = set()
    lines = files.split("\n")
    for i, line in enumerate(lines):
        m = re.match(r"^([^\s#:=][^:=]*?):(?![=:])", line)
        if m and not (i > 0 and lines[i - 1].startswith("# Not a target")):
            targets.update(m.group(1).split())
    assert {"setup", "test"} <= targets, "could not read the Makefile's targets"
    return frozenset(targets)


@cache
def _cli() -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    """The root's options and, per registered subcommand, its option names."""
    from cli.main import app

    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    root = frozenset(o for p in group.params for o in [*p.opts, *p.secondary_opts])
    commands = {
        name: frozenset(o for p in cmd.params for o in [*p.opts, *p.secondary_opts] if o.startswith("-"))
        | {"--help"}
        for name, cmd in group.commands.items()
    }
    return root | {"--help"}, commands


def _options(tokens: list[str]) -> list[str]:
    """`--name` options among command tokens (`[--x`, `--x]`, `--x=v` included)."""
    return [m.group(0) for t in tokens if (m := re.match(r"--[a-z][\w-]*", t.strip("[]()")))]


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_links_and_images_resolve(doc: Path) -> None:
    prose, _ = _split_fences(doc.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_make_targets_named_exist(doc: Path) -> None:
    named = set()
    for line in _code_lines(doc.read_text(encoding="utf-8")):
        for seg in _segments(line):
            m = re.search(r"(?:^|\s)make\s+(.+)", seg)
            if not m:
                continue
            for tok in _tokens(m.group(1)):
                if tok.startswith(("[", "-")) or "=" in tok:
                    continue  # variables (VAR=value, [GPUS=4]) and make's own flags
                if not re.fullmatch(r"[\w.-]+", tok):
                    break
                named.add(tok)
    missing = sorted(named - _make_targets())
    assert not missing, f"{doc.name} names make targets that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_m2s_commands_and_options_named_exist(doc: Path) -> None:
    root_options, commands = _cli()
    problems = []
    for line in _code_lines(doc.read_text(encoding="utf-8")):
        for seg in _segments(line):
            m = re.search(r"(?:^|[\s/])(?:m2s|-m cli\.main)\s+(.+)", seg)
            if not m:
                continue
            tokens = _tokens(m.group(1))
            while tokens and tokens[0].startswith("-"):  # root options, e.g. `m2s --debug …`
                if tokens[0] not in root_options:
                    problems.append(f"`{seg}`: m2s has no option {tokens[0]}")
                tokens = tokens[1:]
            if not tokens or not re.fullmatch(r"[a-z][\w-]*", tokens[0]):
                continue  # `m2s …`, `m2s COMMAND --help`: a placeholder, not a command
            name, rest = tokens[0], tokens[1:]
            if name not in commands:
                problems.append(f"`{seg}`: no subcommand {name!r}")
                continue
            problems += [f"`{seg}`: m2s {name} has no option {o}" for o in _options(rest) if o not in commands[name]]
    assert not problems, f"{doc.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_repository_paths_named_exist(doc: Path) -> None:
    missing = []
    for raw in REPO_PATH.findall(doc.read_text(encoding="utf-8")):
        rel = raw.rstrip(".-")
        if "*" in rel:
            if not any(ROOT.glob(rel)):
                missing.append(rel)
        elif not (ROOT / rel).exists():
            missing.append(rel)
    assert not missing, f"{doc.name} names paths that do not exist: {sorted(set(missing))}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_m2s_python_names_exist(doc: Path) -> None:
    names = set()
    for line in _code_lines(doc.read_text(encoding="utf-8")):
        names.update(DOTTED.findall(line))
        for module, imported in FROM_IMPORT.findall(line):
            names.update(f"{module}.{n.strip()}" for n in imported.split(",") if n.strip())
    missing = []
    for name in sorted(names):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            if obj is None:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert not missing, f"{doc.name} names m2s objects that do not exist: {missing}"


def test_readme_is_a_short_front_page() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail into docs/ (limit {README_MAX_LINES})"


def test_readme_test_command_is_what_ci_runs() -> None:
    """CI runs exactly the README's test command (`.ci/run`: make setup, make test)."""
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in ci
    quick_start = README.read_text(encoding="utf-8").split("## Quick start", 1)[1].split("\n## ", 1)[0]
    _, blocks = _split_fences(quick_start)
    commands = [re.sub(r"\s+#.*$", "", ln).strip() for b in blocks for ln in b.split("\n")]
    assert "make test" in commands and "make setup" in commands


def test_the_checks_catch_what_they_claim() -> None:
    """The extractors see commands, targets and links in the forms the docs use them."""
    text = (
        "Run `make demo` or\n```bash\nmake kitti DATA=/x [GPUS=4]  # comment\n"
        "m2s fuse ROOT --out o \\\n    [--window 4]\n    [--future]\n```\nsee [a](b.md#c) ![i](images/x.png)\n"
    )
    lines = _code_lines(text)
    assert "make demo" in lines and any("--window 4" in ln and "--future" in ln and "m2s fuse" in ln for ln in lines)
    assert all("comment" not in ln for ln in lines)
    assert LINK.findall(_split_fences(text)[0]) == ["b.md#c", "images/x.png"]
    assert _slug("`m2s show` — look at the results") == "m2s-show--look-at-the-results"
    assert "no-such-target" not in _make_targets() and "demo" in _make_targets()
    assert _options(["[--align", "auto|pose]", "--beams=64"]) == ["--align", "--beams"]
