"""The commands and links of the user documentation (README.md, docs/, benchmarks/results/README.md) exist.

tests/test_readme_walkthrough.py runs the README's walk-through; the method pages' commands need GPUs, weights or
data a test cannot have, so they are checked statically here, the same way for every page:

* every command in a ```bash block, and every inline code span that starts with a command, is split into simple
  commands (``&&``, ``;``, ``|``, ``&``; leading ``VAR=value`` and ``torchrun ...`` skipped);
* ``nnunet-ext VERB`` (``nnunet-ext convert NAME``) and ``nnUNetv2_*`` commands: the help of each distinct verb is
  read once (one helper process calls the console scripts' entry points with ``--help``), and every option named
  (``-x``, ``--xy``) must appear in it; an unknown verb or converter fails;
* ``python benchmarks/NAME.py``: the script exists and each option is defined in it or in a benchmark module it
  imports;
* every ``-tr`` / ``-tr_coarse`` / ``-tr_fine`` value in a ```bash block (comma-separated lists too) names a trainer
  of ``trainers/`` or of nnU-Net, and so does every ``nnUNetTrainer...`` name in the text, except classes that a
  page defines itself in a ```python block;
* every relative link points to an existing file (and its ``#anchor`` to a heading of that file);
* the user pages never mention ``../shared`` (it exists only beside this repository's CI), no tracked file cites the
  developers' reference notes (``REFERENCE_NOTES``), and README.md stays at most 15 KB.

Fast: one helper process for all help texts (about 10-20 s on 2 busy cores), the rest is text.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from conftest import REPO
from test_readme_walkthrough import shell_commands  # the walk-through's reading of a code block

README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").rglob("*.md")), REPO / "benchmarks" / "results" / "README.md"]
#: pages a user reads (developers.md may name the CI machine's ../shared data)
USER_PAGES = [README, *sorted((REPO / "docs" / "methods").glob("*.md")), REPO / "docs" / "datasets.md",
              REPO / "docs" / "measuring.md"]
METHOD_PAGES = ["fd", "cps", "s2s2", "gms", "stego", "flare22"]
README_MAX_BYTES = 15_000
OPTION = re.compile(r"^--?[A-Za-z][A-Za-z0-9_-]*$")
TRAINER_OPTIONS = ("-tr", "-tr_coarse", "-tr_fine")
SEPARATORS = {";", "&&", "||", "|", "&"}


# ------------------------------------------------------------------------------------------- parsing
def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def fenced_blocks(text: str):
    """(language, lines) of every fenced code block."""
    blocks, lang, cur = [], None, None
    for line in text.splitlines():
        s = line.strip()
        if cur is None and s.startswith("```"):
            lang, cur = s[3:].strip(), []
        elif cur is not None and s == "```":
            blocks.append((lang, cur))
            cur = None
        elif cur is not None:
            cur.append(line)
    assert cur is None, "unclosed code block"
    return blocks


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    out, inside = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            out.append(line)
    return "\n".join(out)


def simple_commands(cmd: str) -> list:
    """Token lists of the simple commands of a shell line, from the program on (assignments, torchrun dropped)."""
    cmd = cmd.replace("$(which nnunet-ext)", "nnunet-ext")
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    try:
        tokens = list(lex)
    except ValueError:  # an unbalanced quote in an inline span: not a command
        return []
    out, cur = [], []
    for t in tokens + [";"]:
        if t in SEPARATORS:
            while cur and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", cur[0]):
                cur = cur[1:]
            if cur and cur[0] == "torchrun":
                cur = cur[cur.index("nnunet-ext"):] if "nnunet-ext" in cur else []
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(t)
    return out


def is_option(token: str) -> bool:
    return bool(OPTION.match(token.split("=", 1)[0]))


def tool_of(tokens):
    """(program, sub-command path, options) of a simple command this test checks, else None."""
    prog = tokens[0]
    if prog == "nnunet-ext":
        rest = tokens[1:]
        path = []
        while rest and is_option(rest[0]):  # global options before the verb (--debug)
            path.append(rest.pop(0))
        globals_ = list(path)
        if not rest or not re.match(r"^[a-z][a-z0-9_-]*$", rest[0]):  # no verb, or a placeholder like <verb>
            return ("nnunet-ext", [], [f"global:{g}" for g in globals_]) if globals_ else None
        verb = [rest.pop(0)]
        if verb[0] == "convert" and rest and re.match(r"^[a-z][a-z0-9_]*$", rest[0]):
            verb.append(rest.pop(0))
        elif verb[0] == "convert" and rest and re.match(r"^[A-Z_]+$", rest[0]):  # `convert NAME ...`: the options
            rest.pop(0)                                                          # every converter has (msd's)
            verb.append("msd")
        return "nnunet-ext", verb, [t.split("=", 1)[0] for t in rest if is_option(t)] + [
            f"global:{g}" for g in globals_]
    if prog.startswith("nnUNetv2_"):
        return prog, [], [t.split("=", 1)[0] for t in tokens[1:] if is_option(t)]
    if prog in ("python", "python3") and len(tokens) > 1 and tokens[1].startswith("benchmarks/"):
        return tokens[1], [], [t.split("=", 1)[0] for t in tokens[2:] if is_option(t)]
    return None


def page_commands():
    """[(page, kind, simple command tokens)]: kind 'block' for ```bash blocks, 'inline' for inline code spans."""
    out = []
    for page in DOCS:
        text = page.read_text(encoding="utf-8")
        for lang, lines in fenced_blocks(text):
            if lang in ("bash", "sh", "shell"):
                for cmd in shell_commands(lines):
                    out += [(page, "block", t) for t in simple_commands(cmd)]
        for span in re.findall(r"`([^`]+)`", prose(text)):
            span = " ".join(span.split())  # an inline span may wrap over lines
            if re.match(r"^(nnunet-ext|nnUNetv2_\w+|python3? benchmarks/)\s", span + " "):
                out += [(page, "inline", t) for t in simple_commands(span)]
    return out


# ------------------------------------------------------------------------------------------- what exists
HELPER = r"""
import contextlib, io, json, sys
from importlib.metadata import entry_points
requests, out_file = json.loads(sys.argv[1]), sys.argv[2]
scripts = {e.name: e for e in entry_points(group="console_scripts")}
result = {}
for key, (prog, args) in requests.items():
    buf, err, code = io.StringIO(), io.StringIO(), None
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        try:
            if prog not in scripts:
                code = "no such console script"
            elif prog == "nnunet-ext":
                code = scripts[prog].load()(args + ["--help"])
            else:
                sys.argv = [prog] + args + ["--help"]
                code = scripts[prog].load()()
        except SystemExit as e:
            code = e.code
        except Exception as e:  # noqa: BLE001 - reported by the test
            code = f"{type(e).__name__}: {e}"
    result[key] = {"code": code, "help": buf.getvalue(), "err": err.getvalue()[-2000:]}
with open(out_file, "w") as f:
    json.dump(result, f)
"""


@pytest.fixture(scope="module")
def commands():
    cmds = page_commands()
    assert cmds, "no commands found in the documentation"
    return cmds


@pytest.fixture(scope="module")
def helps(commands, tmp_path_factory):
    """{'prog verb...': {'code', 'help', 'err'}} for every distinct nnunet-ext verb and nnUNetv2_* command."""
    requests = {"nnunet-ext": ["nnunet-ext", []]}  # the top level: global options such as --debug
    for _page, _kind, tokens in commands:
        tool = tool_of(tokens)
        if tool and not tool[0].startswith("benchmarks/"):
            prog, verb, _ = tool
            requests[" ".join([prog, *verb])] = [prog, verb]
    out = tmp_path_factory.mktemp("docs_help") / "help.json"
    env = dict(os.environ, PYTHONWARNINGS="ignore", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", HELPER, json.dumps(requests), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-3000:]
    return json.loads(out.read_text())


@lru_cache(maxsize=None)
def known_trainers() -> frozenset:
    """Trainer class names nnU-Net can find: ours (trainers/, names defined or imported there) and nnU-Net's own."""
    names = set()
    for f in (REPO / "trainers").glob("*.py"):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.ImportFrom):
                names.update(a.asname or a.name for a in node.names)
    nnunet = importlib.util.find_spec("nnunetv2").submodule_search_locations[0]
    for root, _dirs, files in os.walk(Path(nnunet) / "training" / "nnUNetTrainer"):
        for fn in files:
            if fn.endswith(".py"):
                names.update(re.findall(r"^class (nnUNetTrainer\w*)\s*\(", (Path(root) / fn).read_text(), re.M))
    return frozenset(n for n in names if n.startswith("nnUNetTrainer"))


def benchmark_options(script: Path) -> str:
    """The source of a benchmark script and of the benchmark modules it imports (where its options are defined)."""
    text = script.read_text(encoding="utf-8")
    for mod in set(re.findall(r"^(?:from|import) (\w+)", text, re.M)):
        other = script.parent / f"{mod}.py"
        if other.is_file():
            text += other.read_text(encoding="utf-8")
    return text


def in_help(option: str, help_text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text) is not None


# ------------------------------------------------------------------------------------------- tests
def test_every_method_page_exists_with_its_sections():
    sections = ["## The idea", "## Defaults and where they come from", "## How it maps onto nnU-Net",
                "## Variants", "## Commands", "## What was measured", "## Where this differs from the authors' code",
                "## Citation"]
    for name in METHOD_PAGES:
        page = REPO / "docs" / "methods" / f"{name}.md"
        assert page.is_file(), f"missing method page {rel(page)}"
        lines = page.read_text(encoding="utf-8").splitlines()
        missing = [s for s in sections if s not in lines]
        assert not missing, f"{rel(page)} lacks the sections {missing}"
        readme = README.read_text(encoding="utf-8")
        assert f"(docs/methods/{name}.md)" in readme, f"the README's methods table does not link {rel(page)}"


def test_every_verb_and_option_exists(commands, helps):
    problems = []
    for page, kind, tokens in commands:
        tool = tool_of(tokens)
        if tool is None:
            continue
        prog, verb, options = tool
        where = f"{rel(page)} ({kind}): {' '.join(tokens)}"
        if prog.startswith("benchmarks/"):
            script = REPO / prog
            if not script.is_file():
                problems.append(f"{where}: no script {prog}")
                continue
            source = benchmark_options(script)
            problems += [f"{where}: {prog} has no option {o}" for o in options
                         if f'"{o}"' not in source and f"'{o}'" not in source]
            continue
        h = helps[" ".join([prog, *verb])]
        if h["code"] not in (0, None):
            problems.append(f"{where}: '{' '.join([prog, *verb, '--help'])}' failed ({h['code']}): {h['err'][-300:]}")
            continue
        for o in options:
            if o.startswith("global:"):
                ok = in_help(o[len("global:"):], helps["nnunet-ext"]["help"])
            else:
                ok = in_help(o, h["help"])
            if not ok:
                problems.append(f"{where}: '{' '.join([prog, *verb])}' has no option {o.replace('global:', '')}")
    assert not problems, "commands in the docs that do not work as written:\n" + "\n".join(sorted(set(problems)))


@lru_cache(maxsize=None)
def package_classes() -> frozenset:
    """Class names defined in the nnunet_ext package (e.g. the base nnUNetTrainerExt, named in developers.md)."""
    names = set()
    for f in (REPO / "nnunet_ext").rglob("*.py"):
        names.update(re.findall(r"^class (\w+)", f.read_text(encoding="utf-8"), re.M))
    return frozenset(names)


def test_every_trainer_named_exists(commands):
    known = known_trainers()
    assert {"nnUNetTrainer", "nnUNetTrainerFD", "nnUNetTrainerCPS"} <= known  # the scan itself works
    problems = []
    for page, kind, tokens in commands:
        if kind != "block":
            continue
        for opt, value in zip(tokens, tokens[1:]):
            if opt in TRAINER_OPTIONS:
                problems += [f"{rel(page)}: {opt} {name}" for name in value.split(",") if name not in known]
    for page in DOCS:
        text = page.read_text(encoding="utf-8")
        defined = {n for lang, lines in fenced_blocks(text) if lang == "python"
                   for n in re.findall(r"^class (\w+)", "\n".join(lines), re.M)}
        for name in set(re.findall(r"\bnnUNetTrainer\w*", text)):
            if name not in known | package_classes() and name not in defined and not name.endswith("__bench"):
                problems.append(f"{rel(page)}: {name}")
    assert not problems, "trainers named in the docs that neither trainers/ nor nnU-Net defines:\n" + \
        "\n".join(sorted(set(problems)))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_points_to_a_file():
    problems = []
    for page in DOCS:
        text = prose(page.read_text(encoding="utf-8"))
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                problems.append(f"{rel(page)}: {target} (no such file)")
                continue
            if anchor and dest.is_file():
                headings = [slug(line.lstrip("#")) for line in prose(dest.read_text(encoding="utf-8")).splitlines()
                            if line.startswith("#")]
                if anchor not in headings:
                    problems.append(f"{rel(page)}: {target} (no heading #{anchor})")
    assert not problems, "broken links:\n" + "\n".join(problems)


#: the developers' reference notes beside the repository, which users never have (spelled in two parts so that
#: this file does not cite it either)
REFERENCE_NOTES = "METHODS" + ".md"


def test_user_pages_name_nothing_a_user_lacks():
    problems = []
    for page in USER_PAGES:
        text = page.read_text(encoding="utf-8")
        for bad in ("../shared", "shared/data", "shared/weights", REFERENCE_NOTES):
            if bad in text:
                problems.append(f"{rel(page)} mentions {bad}")
    assert not problems, "\n".join(sorted(set(problems)))


def test_no_file_cites_the_reference_notes():
    """Code, tests and docs cite the project's own method pages (docs/methods/), never the reference notes."""
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    problems = []
    for name in listed.stdout.splitlines():
        f = REPO / name
        if f.suffix in (".py", ".md", ".sh", ".txt", ".cfg", ".toml", ".json") and f.is_file():
            if REFERENCE_NOTES in f.read_text(encoding="utf-8", errors="replace"):
                problems.append(name)
    assert not problems, f"files citing {REFERENCE_NOTES} (cite docs/methods/<method>.md instead): {problems}"


def test_readme_is_short_and_names_the_ci_test_command():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes (at most {README_MAX_BYTES}): move details to docs/"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash scripts/test.sh" in ci and "bash scripts/test.sh" in README.read_text(encoding="utf-8")


def test_parsing_helpers():
    assert simple_commands('CUDA_VISIBLE_DEVICES=0 nnunet-ext s2s2-generate -d 4 --part 0 &') == [
        ["nnunet-ext", "s2s2-generate", "-d", "4", "--part", "0"]]
    assert simple_commands("torchrun --standalone --nproc_per_node 2 $(which nnunet-ext) s2s2-tune -d 4") == [
        ["nnunet-ext", "s2s2-tune", "-d", "4"]]
    assert simple_commands("a -x && nnUNetv2_train 104 3d_fullres 0; b | c") == [
        ["a", "-x"], ["nnUNetv2_train", "104", "3d_fullres", "0"], ["b"], ["c"]]
    assert tool_of(["nnunet-ext", "convert", "msd_flat", "--source", "x", "--test-fraction=0.2"]) == (
        "nnunet-ext", ["convert", "msd_flat"], ["--source", "--test-fraction"])
    assert tool_of(["nnunet-ext", "--debug", "evaluate", "-gt", "a"]) == (
        "nnunet-ext", ["evaluate"], ["-gt", "global:--debug"])
    assert tool_of(["python", "benchmarks/bench_fd.py", "--batches", "30", "-5"]) == (
        "benchmarks/bench_fd.py", [], ["--batches"])
    assert slug("CPU speed and glibc's allocator") == "cpu-speed-and-glibcs-allocator"
    assert in_help("-d", "  -d D  dataset") and not in_help("-d", "  -device cpu") and not in_help("--c", "--cc")
