"""Turn llhttp's request test corpus into ``llhttp_requests.json``: facts only,
each case's raw request bytes and what llhttp (strict, as a server) made of
them. Not run by the tests; run it again to refresh the data file:

    python tests/unit/llhttp_extract.py GIT_DIR [COMMIT] > tests/unit/llhttp_requests.json

GIT_DIR is a clone of https://github.com/nodejs/llhttp (MIT licence). The
corpus is ``test/request/*.md``: per case a ``meta`` comment, an ``http``
block (the input, in the escape notation the corpus documents: newlines
are CRLF, ``\\r``, ``\\n``, ``\\t``, ``\\f``, ``\\xHH`` and octal escapes, a
backslash before a line end joins lines; the text is sent as UTF-8, so
``\\xff`` is the two bytes of U+00FF) and a ``log`` block (llhttp's
callbacks, each with the offset it fired at). We keep the cases llhttp runs
in its default, strict mode (``request`` and ``request-finish``); the
lenient ones (``request-lenient-*``) record what a relaxed parser accepts,
which says nothing about what must be refused. The ``skipBody`` case is left
out: it is an application telling the parser that a message has no body,
which a server never does.

Each span's bytes are taken from the input at the span's offset and
length; the log's quoted copy is only used to check that the input was
rebuilt right.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

FILES = ["connection", "content-length", "finish", "invalid", "method", "pausing", "pipelining", "sample",
         "transfer-encoding", "uri"]  # test/request/*.md without the lenient-* files
STRICT = {"request", "request-finish"}
UPGRADE_CODES = {22, 23}  # "Pause on CONNECT/Upgrade", "Pause on PRI/Upgrade": the rest is another protocol

_LOG = re.compile(r"off=(\d+|NULL) (.*)")
_SPAN = re.compile(r'len=(\d+) span\[([a-z_.]+)\]="(.*)"')
_ERROR = re.compile(r'error code=(\d+) reason="(.*)"')


def show(git_dir: str, commit: str, path: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def decode_input(block: str) -> bytes:
    """The corpus's notation for an input -> its bytes."""
    text = re.sub(r"\\(\r\n|\r|\n)", "", block)
    text = re.sub(r"\r\n|\r|\n", "\r\n", text)
    for escape, char in (("\\r", "\r"), ("\\n", "\n"), ("\\t", "\t"), ("\\f", "\f")):
        text = text.replace(escape, char)
    text = re.sub(r"\\x([0-9a-fA-F]+)", lambda m: chr(int(m.group(1), 16)), text)
    text = re.sub(r"\\([0-7]{1,3})", lambda m: chr(int(m.group(1), 8)), text)
    assert "${" not in text, "inline script in an input"
    return text.encode("utf-8")  # as the corpus's runner hands it to the parser (Buffer.from)


def unquote_span(text: str) -> bytes:
    """The log's quoted copy of a span (for the consistency check only)."""
    out = text.replace("\\t", "\t").replace("\\f", "\f").replace("\\r", "\r").replace("\\n", "\n")
    return out.encode("utf-8")


def blocks(markdown: str):
    """(heading, line, meta, http block, log block) for every case of a file."""
    lines = markdown.split("\n")
    heading, meta, http, http_line = "", None, None, 0
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif i + 1 < len(lines) and re.fullmatch(r"=+|-+", lines[i + 1]) and line.strip():
            heading = line.strip()
        elif line.startswith("<!-- meta="):
            meta = json.loads(line[len("<!-- meta="):line.rindex("-->")])
        elif line.startswith("```http") or line.startswith("```log"):
            start = i + 1
            i = start
            while lines[i] != "```":
                i += 1
            body = "\n".join(lines[start:i]) + "\n"
            if line.startswith("```http"):
                http, http_line = body, start
            else:
                assert http is not None and meta is not None, (heading, start)
                yield heading, http_line, meta, http, body
                meta = http = None
        i += 1


def case(path: str, heading: str, line: int, meta: dict, http: str, log: str) -> dict:
    raw = decode_input(http[:-1] if http.endswith("\n") else http)
    messages: list[dict] = []
    error = None
    upgrade_at = None
    finish = None
    field = None
    for entry in log.rstrip("\n").split("\n"):
        m = _LOG.fullmatch(entry)
        assert m is not None, (path, line, entry)
        at, what = m.groups()
        if at == "NULL":
            finish = int(what.removeprefix("finish="))
            continue
        off = int(at)
        msg = messages[-1] if messages else None
        if what == "message begin":
            messages.append({"start": off, "method": "", "target": "", "version": "", "headers": [],
                             "headers_complete": False, "body": "", "end": None, "upgrade": False})
        elif (span := _SPAN.fullmatch(what)) is not None:
            length, kind, quoted = int(span.group(1)), span.group(2), span.group(3)
            piece = raw[off:off + length]
            assert piece == unquote_span(quoted), (path, line, entry, piece)
            text = piece.decode("latin-1")
            assert msg is not None
            if kind in ("method", "url", "version", "body"):
                key = {"url": "target"}.get(kind, kind)
                msg[key] += text
            elif kind == "header_field":
                if field is None:
                    field = ""
                    msg["headers"].append(["", ""])
                msg["headers"][-1][0] += text
            elif kind == "header_value":
                msg["headers"][-1][1] += text
        elif what == "header_field complete":
            field = None
        elif what.startswith("headers complete"):
            assert msg is not None
            msg["headers_complete"] = True
        elif what == "message complete":
            assert msg is not None
            msg["end"] = off
        elif (err := _ERROR.fullmatch(what)) is not None:
            code = int(err.group(1))
            if code in UPGRADE_CODES:
                assert msg is not None
                msg["upgrade"] = True
                upgrade_at = off
            else:
                error = {"offset": off, "code": code, "reason": err.group(2)}
        # Everything else (url/method/... complete, chunk headers, chunk
        # extensions, pause, reset) says nothing about framing.
    if finish:
        error = {"offset": len(raw), "code": finish, "reason": "llhttp_finish(): the input ended inside a message"}
    return {
        "file": f"test/request/{path}.md",
        "line": line,
        "name": heading,
        "eof": meta["type"] == "request-finish",
        "raw": raw.decode("latin-1"),
        "error": error,
        "upgrade_at": upgrade_at,
        "messages": messages,
    }


def main() -> None:
    git_dir = sys.argv[1]
    commit = sys.argv[2] if len(sys.argv) > 2 else "HEAD"
    commit = subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", commit], check=True, capture_output=True,
                            text=True).stdout.strip()
    cases = []
    for name in FILES:
        for heading, line, meta, http, log in blocks(show(git_dir, commit, f"test/request/{name}.md")):
            if meta["type"] not in STRICT or meta.get("skipBody"):
                continue
            cases.append(case(name, heading, line, meta, http, log))
    json.dump({
        "source": "https://github.com/nodejs/llhttp",
        "commit": commit,
        "license": "MIT, Copyright (c) 2018 Fedor Indutny; the inputs and verdicts of test/request/*.md",
        "made_by": "tests/unit/llhttp_extract.py",
        "cases": cases,
    }, sys.stdout, indent=1, ensure_ascii=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
