"""``.gitignore`` / ``.dockerignore`` rules for the files that go into a build context.

Git's rules: a pattern with no slash (but a trailing one) matches at any depth below the folder of
its ``.gitignore``; one with a slash is anchored there; ``*``, ``?``, ``[...]`` and ``**`` glob; ``!``
re-includes; a trailing ``/`` matches folders only; the last matching rule wins; an ignored folder
is not entered (so nothing under it can be re-included). ``.gitignore`` files are read in every
folder; the code root's ``.dockerignore`` is read too, its patterns anchored at the root, as Docker
does. A few folders are never worth shipping and are always left out (:data:`ALWAYS`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

#: Left out of every context, whatever the ignore files say.
ALWAYS = (".git/", "__pycache__/", "*.pyc", "*.pyo", ".mypy_cache/", ".pytest_cache/", ".ruff_cache/",
          ".venv/", ".DS_Store")


@dataclass(frozen=True, slots=True)
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def _glob_to_regex(pat: str) -> str:
    out: list[str] = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if c == "*":
            if pat.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
                continue
            if pat.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pat.find("]", i + 2 if pat.startswith("[!", i) or pat.startswith("[^", i) else i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pat[i + 1:j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pat[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def parse_rule(line: str, base: str = "", anchored: bool = False) -> _Rule | None:
    """One ignore-file line as a rule relative to ``base`` (a '/'-separated folder, '' for the root)."""
    line = line.rstrip("\n").rstrip("\r")
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    if not line.endswith("\\ "):
        line = line.rstrip()
    negate = line.startswith("!")
    if negate:
        line = line[1:]
    dir_only = line.endswith("/")
    line = line.strip("/") if dir_only else line
    if line.startswith("/"):
        anchored, line = True, line[1:]
    elif "/" in line:
        anchored = True
    if not line:
        return None
    prefix = re.escape(base + "/") if base else ""
    body = _glob_to_regex(line)
    regex = f"^{prefix}{body}$" if anchored else f"^{prefix}(?:.*/)?{body}$"
    return _Rule(re.compile(regex, re.DOTALL), negate, dir_only)


class IgnoreRules:
    """An ordered set of rules; :meth:`ignored` applies them like git (the last match wins)."""

    def __init__(self, patterns: tuple[str, ...] = ALWAYS):
        self.rules: list[_Rule] = []
        for p in patterns:
            self.add_line(p)

    def add_line(self, line: str, base: str = "", anchored: bool = False) -> None:
        rule = parse_rule(line, base, anchored)
        if rule is not None:
            self.rules.append(rule)

    def add_file(self, path: str, base: str = "", anchored: bool = False) -> None:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    self.add_line(line, base, anchored)
        except OSError:
            pass

    def ignored(self, rel: str, is_dir: bool) -> bool:
        result = False
        for r in self.rules:
            if r.dir_only and not is_dir:
                continue
            if r.regex.match(rel):
                result = not r.negate
        return result


def walk(root: str, extra: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Files under ``root`` that the ignore files keep: sorted ``(relative path, absolute path)``.

    Symlinks to files are followed; symlinked folders are not entered.
    """
    rules = IgnoreRules(ALWAYS + tuple(extra))
    rules.add_file(os.path.join(root, ".dockerignore"), "", anchored=True)
    out: list[tuple[str, str]] = []

    def visit(folder: str, rel: str) -> None:
        gi = os.path.join(folder, ".gitignore")
        if os.path.isfile(gi):
            rules.add_file(gi, rel)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir(follow_symlinks=False):
                if not rules.ignored(r, True):
                    visit(e.path, r)
            elif e.is_file(follow_symlinks=True) and not rules.ignored(r, False):
                out.append((r, e.path))

    visit(root, "")
    return out
