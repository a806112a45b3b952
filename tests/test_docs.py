"""The commands the docs tell a reader to run work as written on a fresh
clone: `make run` / `make test` install the `relay` command into `.venv`, not
onto the PATH, so a bare `relay ...` is `command not found` there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGS = sorted((ROOT / "config").glob("*.toml"))

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
SUBCOMMAND = r"relay\s+(?:serve|check|tail|forward|send|token)\b"
# A bare `relay` where a shell looks for a command: at the start of a line
# (after a `#` in a config's comment, after environment assignments), or
# after `;`, `&&`, `|`, `$(`.
BARE = re.compile(rf"(?:^|[;&|(]\s*)(?:#\s*)?(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*{SUBCOMMAND}", re.M)
# A synopsis (`relay tail URL CHANNEL [--since ID]`) names the command; it is
# not a line to paste. Its placeholders are capitals or brackets.
SYNOPSIS = re.compile(r"\[|\b[A-Z][A-Z_]+\b")


def runnable_lines(path: Path) -> list[str]:
    text = path.read_text()
    if path.suffix == ".toml":
        return [line for line in text.splitlines() if line.lstrip().startswith("#")]
    lines = []
    for lang, body in FENCE.findall(text):
        if lang in ("sh", "bash", "console", "shell"):
            # (a comment line there is the program's output, not a command)
            lines.extend(line for line in body.splitlines() if not line.lstrip().startswith("#"))
    for span in INLINE.findall(FENCE.sub("", text)):
        words = span.split()
        if len(words) > 2 and words[0] == "relay" and not SYNOPSIS.search(span):
            lines.append(span)  # a whole command in prose: `relay tail https://... demo`
    return lines


def test_no_command_in_the_docs_or_config_examples_calls_a_bare_relay():
    bare = [f"{path.relative_to(ROOT)}: {line.strip()}"
            for path in DOCS + CONFIGS for line in runnable_lines(path) if BARE.search(line.strip())]
    assert not bare, "use .venv/bin/relay (or make run), as a fresh clone has no relay on the PATH:\n" + "\n".join(bare)


def test_the_doc_scan_sees_the_quick_start_commands():
    # The scan above must not pass by seeing nothing.
    readme = runnable_lines(ROOT / "README.md")
    assert any(".venv/bin/relay tail http://127.0.0.1:8080" in line for line in readme), readme
    assert BARE.search("FOO=1 relay serve -c x.toml") and BARE.search("#   relay tail http://x demo")
    assert not BARE.search(".venv/bin/relay tail http://x demo")
