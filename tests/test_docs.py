"""The docs cannot drift from the code: README.md, docs/*.md and MODEL_CARD.md are checked against the real CLIs.

- Every `emo-edge`, `emo-train` and `emo-export` command line in them is parsed by the command's
  own Typer/Click parser, without running it: from fenced ``sh``/``bash``/``shell``/``console``
  blocks (continuation lines joined, comments and ``$`` prompts dropped, each command of a pipe or
  ``&&`` chain taken, ``sudo``/``VAR=value`` prefixes and install paths such as
  ``.venv/bin/emo-edge`` allowed) and from inline code spans that start with one of the commands.
  A renamed or removed option, a command that no longer exists or a value out of range fails with
  the file and line. Placeholders (``N``, ``ROOT``, ``<pi>``) get a dummy value that parses where
  the option wants a number or a choice. An inline span may be a fragment (```emo-edge evaluate
  --degrade all``` without its DATA, ```emo-train fit --data``` without its value): only what is
  missing is forgiven there, never an unknown option or a bad value.
- Every inline ``--option`` span names an option that one of the three CLIs has.
- Every relative link and image (``](docs/x.md)``, ``](../MODEL_CARD.md#data)``) points to a file
  that exists, and an anchor to a heading that exists.
- The JSON example (a ``json`` block right after a block holding one ``emo-edge infer`` command)
  is what that command prints now, compared at the precision shown (timings: keys only).
"""
from __future__ import annotations

import functools
import json
import platform
import re
import shlex
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Optional, get_args

import pytest

from conftest import REPO, run_cli

DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", *DOCS, REPO / "MODEL_CARD.md"]
PROGS = {"emo-edge": "emo.edge_runtime.cli", "emo-train": "emo.train.cli", "emo-export": "emo.export.cli"}
MODULES = {m: p for p, m in PROGS.items()}  # python -m emo.train.cli (torchrun) is emo-train
SHELL_LANGS = {"sh", "bash", "shell", "console"}
PREFIXES = {"sudo", "env", "time", "exec", "nohup", "do", "then", "else"}
SEPARATORS = {"|", "||", "&&", ";", "&", "(", ")", ";;"}
REDIRECTS = {">", ">>", "<", "&>", ">&", "<<", "<<<"}
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(\.\.\.)?|<[^<>]+>|\.\.\.")
MENTION = re.compile(r"(?:^|[\s/])(emo-edge|emo-train|emo-export)(?:\s|$)")
# options of other tools that the docs name in inline code (benchmark scripts, pip, torchrun)
OTHER_OPTIONS = {"--quick", "--minutes", "--yunet", "--stamp", "--index-url", "--nproc-per-node", "--system-site-packages"}


@dataclass
class Command:
    page: Path
    line: int
    prog: str
    args: list[str]
    text: str
    fragment: bool  # an inline mention: a missing argument is forgiven

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}: {self.text}"


@dataclass
class Block:
    lang: str
    start: int  # line number of the first line inside the fence
    lines: list[str]
    end: int  # line number of the closing fence


def fenced_blocks(text: str) -> list[Block]:
    blocks, cur = [], None
    for n, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if cur is None and s.startswith("```"):
            cur = Block(s[3:].strip().lower(), n + 1, [], 0)
        elif cur is not None and s.startswith("```"):
            cur.end = n
            blocks.append(cur)
            cur = None
        elif cur is not None:
            cur.lines.append(raw)
    assert cur is None, f"a code block opened at line {cur.start - 1} is never closed"
    return blocks


def prose(text: str) -> str:
    """The text with fenced blocks blanked (line numbers kept)."""
    out, inside = [], False
    for raw in text.splitlines():
        fence = raw.strip().startswith("```")
        out.append("" if inside or fence else raw)
        inside ^= fence
    return "\n".join(out)


def strip_comment(line: str) -> str:
    """Drop a shell comment: a # that starts a word, outside quotes."""
    quote, prev = None, " "
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and prev.isspace():
            return line[:i]
        prev = c
    return line


def shell_lines(block: Block) -> list[tuple[int, str]]:
    """(line number, command line) of a shell block: continuations joined, comments dropped."""
    out, pending, start = [], "", 0
    for n, raw in enumerate(block.lines, block.start):
        line = raw.strip()
        if not pending:
            if block.lang == "console":
                if not line.startswith("$ "):
                    continue  # output
                line = line[2:]
            elif line.startswith("$ "):
                line = line[2:]
            start = n
        line = strip_comment(line).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def tokens(line: str) -> list[str]:
    line = re.sub(r"(^|\s)\d+>", r"\1>", line)  # 2>/dev/null: the fd number is not an argument
    lx = shlex.shlex(line, posix=True, punctuation_chars=True)
    lx.whitespace_split, lx.commenters = True, ""
    return list(lx)


def commands_in(line: str) -> list[tuple[str, list[str]]]:
    """Each emo command of a shell line (a pipe or && chain may hold several) with its arguments."""
    segments, cur = [], []
    toks = iter(tokens(line))
    for t in toks:
        if t in SEPARATORS:
            segments.append(cur)
            cur = []
        elif t in REDIRECTS:
            next(toks, None)  # the redirect's target is not an argument
        else:
            cur.append(t)
    segments.append(cur)
    found = []
    for seg in segments:
        i = 0
        while i < len(seg):  # skip what runs the command: sudo, VAR=value, nice -n 10, timeout 60
            t = seg[i]
            if t in PREFIXES or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", t):
                i += 1
            elif t in ("nice", "timeout"):
                i += 1
                while i < len(seg) and (seg[i].startswith("-") or seg[i][:1].isdigit()):
                    i += 1
            else:
                break
        if i < len(seg) and Path(seg[i]).name in PROGS:
            found.append((Path(seg[i]).name, seg[i + 1:]))
            continue
        for j in range(i, len(seg) - 1):  # python -m emo.train.cli, torchrun ... -m emo.train.cli
            if seg[j] == "-m" and seg[j + 1] in MODULES:
                found.append((MODULES[seg[j + 1]], seg[j + 2:]))
                break
    return found


def doc_commands(page: Path) -> tuple[list[Command], list[str]]:
    """The commands of a page, and the lines that name a command but yield none (an extractor gap)."""
    text = page.read_text()
    cmds, missed = [], []
    for b in fenced_blocks(text):
        if b.lang not in SHELL_LANGS:
            continue
        for n, line in shell_lines(b):
            found = commands_in(line)
            cmds += [Command(page, n, prog, args, line.strip(), False) for prog, args in found]
            if not found and MENTION.search(line):
                missed.append(f"{page.relative_to(REPO)}:{n}: {line.strip()}")
    body = prose(text)
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", body):
        span = " ".join(m.group(1).split())
        n = body.count("\n", 0, m.start()) + 1
        cmds += [Command(page, n, prog, args, span, True) for prog, args in commands_in(span)]
    return cmds, missed


_APPS: dict = {}


def root_command(prog: str):
    if prog not in _APPS:
        import importlib

        import typer.main

        _APPS[prog] = typer.main.get_command(importlib.import_module(PROGS[prog]).app)
    return _APPS[prog]


def is_group(cmd) -> bool:
    return hasattr(cmd, "resolve_command") and hasattr(cmd, "list_commands")


def kinds(e: BaseException) -> set[str]:
    """Click's exception class names (Typer may vendor its own Click, so names, not classes)."""
    return {c.__name__ for c in type(e).__mro__}


def annotation(param):
    ann = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    inner = [a for a in get_args(ann) if a is not type(None)]
    return inner[0] if inner else ann


def dummy(value: str, param) -> str:
    """A value that parses for ``param`` in place of a placeholder such as N or ROOT."""
    if param is None or not PLACEHOLDER.fullmatch(value):
        return value
    ptype, ann = getattr(param, "type", None), annotation(param)
    choices = getattr(ptype, "choices", None)
    if choices is None and isinstance(ann, type) and hasattr(ann, "__members__"):  # an Enum
        choices = [m.value for m in ann]
    if choices:
        return str(choices[0])
    if ann in (int, float) or getattr(ptype, "name", "") in ("integer", "float", "integer range", "float range"):
        lo = getattr(param, "min", None)
        lo = getattr(ptype, "min", None) if lo is None else lo
        return str(lo if lo is not None and lo > 0 else 1)
    return value


def takes_value(param) -> bool:
    return not getattr(param, "is_flag", False) and not getattr(param, "count", False)


def with_dummies(cmd, args: list[str]) -> list[str]:
    """``args`` with placeholders replaced where ``cmd``'s parameters need a number or a choice."""
    params = getattr(cmd, "params", [])
    opts = {o: p for p in params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])] if o.startswith("-")}
    positional = [p for p in params if not any(o.startswith("-") for o in getattr(p, "opts", []))]
    out, i, k = [], 0, 0
    while i < len(args):
        t = args[i]
        if t.startswith("-") and len(t) > 1 and not re.fullmatch(r"-[\d.]+", t):
            name, eq, val = t.partition("=")
            p = opts.get(name)
            if p is not None and eq:
                out.append(f"{name}={dummy(val, p)}")
            elif p is not None and takes_value(p) and name not in getattr(p, "secondary_opts", []):
                n = max(1, getattr(p, "nargs", 1))
                out += [t, *(dummy(v, p) for v in args[i + 1:i + 1 + n])]
                i += n
            else:
                out.append(t)
        else:
            p = positional[min(k, len(positional) - 1)] if positional else None
            out.append(dummy(t, p))
            k += 1
        i += 1
    return out


def parse_problem(c: Command) -> Optional[str]:
    """None when the command line parses; else what the parser said."""
    root = root_command(c.prog)
    args = [a.strip("[]") if a.startswith("[") else a for a in c.args]  # [MODEL]: optional, shown
    try:
        if not is_group(root):
            root.make_context(c.prog, with_dummies(root, args))
            return None
        if not args:
            return None  # `emo-edge` alone: a mention of the command
        lead = []  # the group's own options (--help, --version, ...) before the subcommand
        while args and args[0].startswith("-"):
            lead.append(args.pop(0))
        ctx = root.make_context(c.prog, lead + args[:1])
        if not args:
            return None
        name, sub, rest = root.resolve_command(ctx, args)
        if sub is None:
            return f"no such command {name!r}"
        sub.make_context(name, with_dummies(sub, rest), parent=ctx)
    except Exception as e:  # noqa: BLE001 (Click's own exception classes, whichever Click it is)
        k = kinds(e)
        if "Exit" in k:
            return None  # --help, --version: parsed
        if c.fragment and ("MissingParameter" in k or "requires an argument" in e.format_message()):
            return None  # `emo-train fit --data` in prose names an option; its value is elsewhere
        if "UsageError" in k:
            return " ".join(e.format_message().split())
        raise
    return None


@functools.lru_cache(maxsize=None)
def page_commands(page: Path) -> tuple[list[Command], list[str]]:
    return doc_commands(page)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_line_parses(page):
    cmds, missed = page_commands(page)
    assert not missed, "these lines name an emo command the test could not pick out:\n" + "\n".join(missed)
    bad = [f"{c.where()}\n    -> {why}" for c in cmds if (why := parse_problem(c))]
    assert not bad, "command lines the CLI refuses (update the docs or the CLI):\n" + "\n".join(bad)


def test_the_docs_show_each_command():
    """The extractor finds the docs' commands: every program and every emo-edge/emo-train command."""
    seen = {(c.prog, (c.args or [""])[0]) for page in PAGES for c in page_commands(page)[0]}
    want = [("emo-export", "")]
    for prog in ("emo-edge", "emo-train"):
        root = root_command(prog)
        want += [(prog, name) for name in root.list_commands(None) if not getattr(root.get_command(None, name), "hidden", False)]
    missing = [f"{p} {n}".strip() for p, n in want if p == "emo-export" and not any(s[0] == p for s in seen)
               or p != "emo-export" and (p, n) not in seen]
    assert not missing, f"no command line in README.md or docs/ shows: {', '.join(missing)}"


def all_options() -> set[str]:
    names = set()

    def walk(cmd):
        for p in getattr(cmd, "params", []):
            names.update(o for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])] if o.startswith("--"))
        if is_group(cmd):
            for n in cmd.list_commands(None):
                walk(cmd.get_command(None, n))

    for prog in PROGS:
        walk(root_command(prog))
    return names


def test_inline_options_exist():
    """`--detect-size` in prose is an option of emo-edge, emo-train or emo-export (or a listed other tool's)."""
    known, bad = all_options() | OTHER_OPTIONS | {"--help"}, []
    for page in PAGES:
        body = prose(page.read_text())
        for m in re.finditer(r"(?<!`)`(--[^`]+)`(?!`)", body):
            n = body.count("\n", 0, m.start()) + 1
            for t in re.findall(r"(?:^|\s)(--[a-z0-9][a-z0-9-]*)", m.group(1)):
                if t not in known:
                    bad.append(f"{page.relative_to(REPO)}:{n}: `{m.group(1)}`: no emo command has {t}")
            for t in re.findall(r"/(--[a-z0-9][a-z0-9-]*)", m.group(1)):  # --align/--no-align
                if t not in known:
                    bad.append(f"{page.relative_to(REPO)}:{n}: `{m.group(1)}`: no emo command has {t}")
    assert not bad, "\n".join(bad)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(page.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(page):
    body, bad = prose(page.read_text()), []
    for m in re.finditer(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", body):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        n = body.count("\n", 0, m.start()) + 1
        where = f"{page.relative_to(REPO)}:{n}: ({target})"
        if not dest.exists():
            bad.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{where}: no heading with that anchor in {dest.name}")
    assert not bad, "\n".join(bad)


def test_readme_stays_short_and_keeps_the_ci_command():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
    i = lines.index("# emo:test-command")  # .ci/run runs the line after it
    assert lines[i + 1].startswith("python3 -m venv .venv && ") and "pytest" in lines[i + 1]


# -- the JSON example -----------------------------------------------------------------------------

VOLATILE = {"timing_ms"}  # milliseconds differ from run to run: their keys are compared, not values
X86 = platform.machine().lower() in ("x86_64", "amd64")
# other CPUs round int8 and resizing differently (tests/test_golden.py): a few pixels, a point
BOX_SLACK, SCORE_SLACK = (0, 0.0) if X86 else (4, 1.0)


def json_examples() -> list[tuple[Command, Block]]:
    """(command, json block) pairs: a json block right after a block holding one emo-edge infer."""
    pairs = []
    for page in PAGES:
        blocks = fenced_blocks(page.read_text())
        for prev, b in zip(blocks, blocks[1:]):
            if b.lang != "json" or prev.lang not in SHELL_LANGS or b.start - 1 - prev.end > 2:
                continue
            cmds = [Command(page, n, prog, args, line, False) for n, line in shell_lines(prev) for prog, args in commands_in(line)]
            if len(cmds) == 1 and cmds[0].args[:1] == ["infer"]:
                pairs.append((cmds[0], b))
    return pairs


def shown_values(text: str) -> list:
    """The JSON values of a block (JSON Lines, each may be pretty-printed), floats kept as written."""
    dec, out, i = json.JSONDecoder(parse_float=Decimal), [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return out
        v, i = dec.raw_decode(text, i)
        out.append(v)


def compare(shown, actual, path: str, problems: list[str]) -> None:
    if isinstance(shown, dict):
        if not isinstance(actual, dict) or list(shown) != list(actual):
            problems.append(f"{path}: keys shown {list(shown)}, printed {list(actual) if isinstance(actual, dict) else actual!r}")
            return
        for k in shown:
            if k in VOLATILE:
                if isinstance(shown[k], dict) and isinstance(actual[k], dict) and list(shown[k]) != list(actual[k]):
                    problems.append(f"{path}.{k}: keys shown {list(shown[k])}, printed {list(actual[k])}")
            else:
                compare(shown[k], actual[k], f"{path}.{k}", problems)
    elif isinstance(shown, list):
        if not isinstance(actual, list) or len(shown) != len(actual):
            problems.append(f"{path}: shown {json.dumps(shown, default=str)}, printed {json.dumps(actual)}")
            return
        for i, (s, a) in enumerate(zip(shown, actual)):
            compare(s, a, f"{path}[{i}]", problems)
    elif isinstance(shown, Decimal):
        places = max(0, -shown.as_tuple().exponent)
        ok = isinstance(actual, (int, float)) and not isinstance(actual, bool) and \
            abs(actual - float(shown)) <= 0.5 * 10 ** -places + SCORE_SLACK + 1e-9
        if not ok:
            problems.append(f"{path}: shown {shown}, printed {actual!r}")
    elif isinstance(shown, int) and not isinstance(shown, bool):
        slack = BOX_SLACK if ".box[" in path else 0
        if not (isinstance(actual, int) and not isinstance(actual, bool) and abs(actual - shown) <= slack):
            problems.append(f"{path}: shown {shown}, printed {actual!r}")
    elif shown != actual:
        problems.append(f"{path}: shown {shown!r}, printed {actual!r}")


def test_the_json_example_is_what_infer_prints():
    pairs = json_examples()
    assert pairs, "no JSON example (a ```json block right after a block with one `emo-edge infer` command) in the docs"
    for cmd, block in pairs:
        # run it as shown, from the repository root, with the tests' empty model cache (conftest): Haar
        r = run_cli(cmd.prog, *cmd.args, cwd=REPO)
        assert r.returncode == 0, f"{cmd.where()}: exit {r.returncode}\n{r.stderr}"
        printed = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
        shown = shown_values("\n".join(block.lines))
        problems: list[str] = []
        if len(shown) != len(printed):
            problems.append(f"{len(shown)} records shown, {len(printed)} printed")
        for i, (s, a) in enumerate(zip(shown, printed)):
            compare(s, a, f"record {i}", problems)
        assert not problems, (f"{cmd.where()}: the example (line {block.start}) is not what the command prints now; "
                              f"paste this over it:\n{r.stdout}\n" + "\n".join(problems))
