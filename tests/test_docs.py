"""The docs against the code: README.md's Quickstart runs as written; every `ltr` command and --flag shown in a
```bash block of README.md or docs/*.md exists; every docs page is linked from README.md; no working notes
(the pattern in `_NOTES` below) in the Markdown or Python files."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

from ltr.cli import app

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
SHELL_LANGS = {"bash", "sh", "shell"}


# --- Markdown ---------------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s{0,3}(```+|~~~+)\s*([\w+-]*)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def _lines_outside_fences(md: str):
    """(line, inside_a_fence) for each line: a `#` comment inside a code block is not a heading."""
    fence = None
    for line in md.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * 3
            yield line, True
        elif fence is not None and line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            fence = None
            yield line, True
        else:
            yield line, fence is not None


def section(md: str, title: str) -> str | None:
    """The text under the heading `title` (any level, case-insensitive) down to the next heading of the
    same or a higher level; None when there is no such heading."""
    out, level = [], None
    for line, fenced in _lines_outside_fences(md):
        h = None if fenced else _HEADING.match(line)
        if level is None:
            if h and h.group(2).strip().lower() == title.lower():
                level = len(h.group(1))
            continue
        if h and len(h.group(1)) <= level:
            break
        out.append(line)
    return None if level is None else "\n".join(out) + "\n"


def code_blocks(md: str, langs=SHELL_LANGS) -> list[str]:
    """The bodies of the fenced code blocks whose info string's language is in `langs`, in order."""
    blocks, cur, fence, keep = [], [], None, False
    for line in md.splitlines():
        m = _FENCE.match(line)
        if fence is None:
            if m:
                fence, keep, cur = m.group(1)[0] * 3, m.group(2).lower() in langs, []
        elif line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            if keep:
                blocks.append("\n".join(cur) + "\n")
            fence = None
        else:
            cur.append(line)
    return blocks


def test_markdown_parsing():
    md = ("# T\nintro\n## Quickstart\ntext\n```bash\n# a comment, not a heading\nltr world --out x\n```\n"
          "### Sub\n```sh\necho sub\n```\n```yaml\nseed: 1\n```\n## Next\n```bash\nltr run\n```\n")
    q = section(md, "quickstart")
    assert q is not None and "## Next" not in q and "### Sub" in q and "ltr run" not in q
    assert code_blocks(q) == ["# a comment, not a heading\nltr world --out x\n", "echo sub\n"]
    assert code_blocks(md, {"yaml"}) == ["seed: 1\n"]
    assert section(md, "Missing") is None
    assert section("## Quickstart\n```bash\na\n```\n", "Quickstart").count("```") == 2


# --- shell commands -----------------------------------------------------------------------------------

_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?[smhd]?$")
_WRAPPERS = {"nohup", "time", "exec", "env", "command", "setsid", "nice", "timeout", "sudo", "then", "do",
             "else", "!", "{"}
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_]\w*)\1")


def _clean(line: str) -> str:
    """Drop a `#` comment (a # that starts a word, outside quotes) and the [ ] of optional parts, where a |
    separates alternatives rather than piping (`[--backend grader|openai]`)."""
    out, quote, depth = [], None, 0
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
            out.append(ch)
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "<>":  # 2>&1, 1> f: the file descriptor is part of the redirection, not a word
            k = len(out)
            while k and out[k - 1].isdigit():
                k -= 1
            if k < len(out) and (k == 0 or out[k - 1] in " \t"):
                del out[k:]
        elif ch == "#" and (i == 0 or line[i - 1] in " \t;|&("):
            break
        elif ch == "[" and (i == 0 or line[i - 1] in " \t"):
            depth += 1
            ch = " "
        elif ch == "]" and depth:
            depth -= 1
            ch = " "
        elif ch == "|" and depth:
            ch = " "
        out.append(ch)
    return "".join(out)


def _logical_lines(script: str):
    """The script's lines with continuations joined and heredoc bodies left out."""
    lines = script.replace("\\\r\n", " ").replace("\\\n", " ").splitlines()
    end = None
    for line in lines:
        if end is not None:
            if line.strip() == end:
                end = None
            continue
        m = _HEREDOC.search(_clean(line))
        if m:
            end = m.group(2)
        yield line


def simple_commands(script: str) -> list[list[str]]:
    """Every simple command in a shell script as its words: split at | || && ; & ( ) and newlines; a
    redirection (> f, 2>&1) is dropped; $VARS and quoted words stay one word each."""
    cmds = []
    for line in _logical_lines(script):
        text = _clean(line)
        lex = shlex.shlex(text, posix=True, punctuation_chars=True)
        lex.whitespace_split, lex.commenters = True, ""
        try:
            words = list(lex)
        except ValueError:  # unbalanced quotes: good enough for finding flags
            words = text.split()
        cur, skip = [], False
        for w in words:
            if skip:
                skip = False
                continue
            if w and all(c in "();<>|&" for c in w):
                if "<" in w or ">" in w:
                    skip = True  # the redirection's target
                    continue
                if cur:
                    cmds.append(cur)
                cur = []
                continue
            cur.append(w)
        if cur:
            cmds.append(cur)
    return cmds


def ltr_invocations(script: str) -> list[list[str]]:
    """The arguments of each `ltr ...` (or .venv/bin/ltr, python -m ltr.cli) command in a shell script, after
    any VAR=value prefixes and wrappers (nohup, timeout 60, ...)."""
    found = []
    for words in simple_commands(script):
        for i, w in enumerate(words):
            if os.path.basename(w) == "ltr":
                found.append(words[i + 1:])
                break
            if w in ("ltr.cli", "ltr") and i and words[i - 1] == "-m":
                found.append(words[i + 1:])
                break
            if not (_ASSIGN.match(w) or w in _WRAPPERS or w.startswith("-") or _NUMBER.match(w)
                    or os.path.basename(w).startswith("python") or w == "-m"):
                break
    return found


def test_shell_parsing():
    script = r"""
export OUT=$(mktemp -d)   # a temp dir
ltr world --out "$OUT/w" --seed 7          # comment --not-a-flag
LTR_VERBOSE=1 .venv/bin/ltr run --config configs/smoke.yaml \
    --out $OUT/run  2>&1 | tee run.log
nohup ltr serve --run-dir $OUT/run --port 8080 > serve.log 2>&1 &
timeout 60 ltr -v features build --dataset D --out F ; ltr label [--backend grader|openai] [--max-dollars X] | tee x
curl -s localhost:8080/v1/rank -d '{"query": "ltr run --fake"}' && kill %1
python -m ltr.cli evaluate --model m --dataset d --out e.json
echo "ltr run --quoted-is-not-a-command"; grep ltr log
cat > x.yaml <<'EOF'
ltr run --inside-a-heredoc
EOF
ltr mine --weight=a=1 --top -1 --config a#b
"""
    assert ltr_invocations(script) == [
        ["world", "--out", "$OUT/w", "--seed", "7"],
        ["run", "--config", "configs/smoke.yaml", "--out", "$OUT/run"],
        ["serve", "--run-dir", "$OUT/run", "--port", "8080"],
        ["-v", "features", "build", "--dataset", "D", "--out", "F"],
        ["label", "--backend", "grader", "openai", "--max-dollars", "X"],
        ["evaluate", "--model", "m", "--dataset", "d", "--out", "e.json"],
        ["mine", "--weight=a=1", "--top", "-1", "--config", "a#b"],
    ]


# --- the CLI -------------------------------------------------------------------------------------------

CLI = typer.main.get_command(app)  # what `ltr --help` and every `ltr CMD --help` print come from


# (typer vendors its own click: the objects are used by their attributes, not by isinstance)
def _option(cmd, name: str):
    for p in cmd.params:
        if p.param_type_name == "option" and not p.hidden and name in (*p.opts, *p.secondary_opts):
            return p
    return None


def _takes_value(p) -> bool:
    return not (p.is_flag or p.count)


def check_ltr_args(args: list[str], root=CLI) -> list[str]:
    """What is wrong with `ltr ARGS` as documentation: a subcommand or --flag that does not exist (a
    value may be a placeholder: DIR, $OUT; it is not checked)."""
    problems, cmd, path, i, options_here = [], root, ["ltr"], 0, False
    while i < len(args):
        tok = args[i]
        i += 1
        if tok == "--":
            break
        if tok.startswith("-") and tok != "-" and not _NUMBER.match(tok):
            name = tok.split("=", 1)[0]
            if name == "--help":
                continue
            p = _option(cmd, name)
            if p is None and re.fullmatch(r"-[A-Za-z]{2,}", name):  # -vv
                if all(_option(cmd, "-" + c) is not None for c in name[1:]):
                    continue
            if p is None:
                problems.append(f"`{' '.join(path)}` has no option {name}")
                continue
            options_here = True
            if _takes_value(p) and "=" not in tok:
                i += p.nargs if p.nargs > 0 else 1
            continue
        if hasattr(cmd, "commands"):  # a group
            sub = cmd.commands.get(tok)
            if sub is not None:
                cmd, options_here = sub, False
                path.append(tok)
            elif not (cmd.invoke_without_command and options_here):
                problems.append(f"`{' '.join(path)}` has no subcommand {tok!r}")
                break
    return problems


def test_cli_checker():
    assert check_ltr_args(["run", "--config", "c.yaml", "--out", "$OUT", "--skip-experiments"]) == []
    assert check_ltr_args(["-v", "-v", "features", "build", "--dataset", "D", "--out", "F"]) == []
    assert check_ltr_args(["-vv", "serve", "--lazy-embeddings", "--port=8080", "--help"]) == []
    assert check_ltr_args(["label", "--backend", "grader", "openai", "--max-dollars", "X"]) == []
    assert check_ltr_args(["label", "calibrate", "--labels", "l", "--dataset", "d"]) == []
    assert check_ltr_args(["run", "--confg", "c.yaml"]) == ["`ltr run` has no option --confg"]
    assert check_ltr_args(["trian", "--config", "c"]) == ["`ltr` has no subcommand 'trian'"]
    assert check_ltr_args(["features", "buidl"]) == ["`ltr features` has no subcommand 'buidl'"]
    assert check_ltr_args(["label", "calibrat"]) == ["`ltr label` has no subcommand 'calibrat'"]
    assert check_ltr_args(["--out", "x", "run"]) == ["`ltr` has no option --out", "`ltr` has no subcommand 'x'"]
    assert check_ltr_args(["mine", "--top", "-1", "--weight=a=1"]) == []


def _doc_files() -> list[Path]:
    return [README, *DOCS]


def test_every_documented_command_and_flag_exists():
    problems, n = [], 0
    for f in _doc_files():
        for block in code_blocks(f.read_text()):
            for args in ltr_invocations(block):
                n += 1
                problems += [f"{f.relative_to(REPO)}: ltr {' '.join(args)}: {p}" for p in check_ltr_args(args)]
    assert n, "no `ltr` command in any ```bash block of README.md or docs/*.md"
    assert not problems, "\n".join(problems)


# --- links and notes -------------------------------------------------------------------------------------

_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*<?(\S+?)>?\s*$|"
                   r"href=[\"']([^\"']+)[\"']", re.M)


def linked_files(md: str, base: Path) -> set[Path]:
    """The local files a Markdown text links to (inline, reference-style and HTML links; #anchors dropped)."""
    out = set()
    for m in _LINK.finditer(md):
        target = next(g for g in m.groups() if g)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http:, mailto:, an anchor on the same page
        out.add((base / target.split("#", 1)[0]).resolve())
    return out


def test_link_parsing(tmp_path):
    md = ("see [a](docs/a.md), [b](./docs/b.md#part \"title\"), [web](https://x.org/docs/c.md), [here](#x)\n"
          "[d]: docs/d.md\n<a href=\"docs/e.md\">e</a>\n")
    assert linked_files(md, tmp_path) == {(tmp_path / "docs" / f"{n}.md").resolve() for n in "abde"}


def test_every_docs_page_is_linked_from_readme():
    linked = linked_files(README.read_text(), REPO)
    missing = [str(p.relative_to(REPO)) for p in DOCS if p.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"


_NOTES = re.compile("session [0-9]|this " + "session", re.I)  # split: this file must not match itself
_SKIP_DIRS = {".venv", ".git", "runs", "mlruns", "__pycache__", "node_modules"}


def notes_in(root: Path) -> list[str]:
    """`grep -rni "session [0-9]\\|this <s>" --include='*.md' --include='*.py'`, minus .venv, .git, runs,
    mlruns: file:line: text for each hit."""
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for fn in filenames:
            if fn.endswith((".md", ".py")):
                p = Path(dirpath) / fn
                for no, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
                    if _NOTES.search(line):
                        hits.append(f"{p.relative_to(root)}:{no}: {line.strip()[:120]}")
    return hits


def test_notes_grep(tmp_path):
    s = "Session"  # the texts below are built so that this file does not match the pattern itself
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x.md").write_text(f"in {s} 7 we\n")  # skipped folder
    (tmp_path / "a.md").write_text(f"fine\nmeasured in {s.upper()} 12\n")
    (tmp_path / "b.py").write_text(f"# {s}s 4000 is a setting\nx = 1  # this {s}'s figure\n")
    (tmp_path / "c.txt").write_text(f"{s} 3\n")  # neither .md nor .py
    assert notes_in(tmp_path) == [f"a.md:2: measured in {s.upper()} 12", f"b.py:2: x = 1  # this {s}'s figure"]


def test_no_working_notes_in_docs_or_code():
    hits = notes_in(REPO)
    assert not hits, "working notes left in the docs/code:\n" + "\n".join(hits)


# --- the Quickstart, run as written ----------------------------------------------------------------------

_COPY_SKIP = _SKIP_DIRS | {".pytest_cache", ".ruff_cache", ".ipynb_checkpoints", "build", "dist"}
_COPY_SKIP_PATHS = {REPO / "bench" / "results", REPO / "feature_repo" / "data"}


def _copy_ignore(dirpath: str, names: list[str]) -> set[str]:
    return {n for n in names if n in _COPY_SKIP or n.endswith(".egg-info") or Path(dirpath, n) in _COPY_SKIP_PATHS}


def _ports(script: str) -> set[int]:
    ports = {int(p) for p in re.findall(r"--port[ =](\d+)", script)}
    ports |= {int(p) for p in re.findall(r"(?:localhost|127\.0\.0\.1|0\.0\.0\.0):(\d+)", script)}
    if any(a and a[0] == "serve" and "--port" not in " ".join(a) for a in ltr_invocations(script)):
        ports.add(8080)  # `ltr serve`'s default
    return ports


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kill_group(proc: subprocess.Popen) -> None:
    """The script and everything it started (a background `ltr serve`): one process group, its own."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the script itself: a zombie still counts as a member of its group
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def run_in_copy(script: str, tmp_path: Path, timeout: float) -> tuple[int | None, str, float]:
    """Run a bash script in a copy of the repository (its own runs/ and mlruns/; the virtualenv and ../shared
    linked), this interpreter's bin/ first on PATH, with a time limit; whatever it started is ended after.
    Returns (exit status or None when over the limit, output, seconds)."""
    ws = tmp_path / "ws"
    repo = ws / REPO.name
    shutil.copytree(REPO, repo, ignore=_copy_ignore, symlinks=True)
    (repo / "mlruns").mkdir(exist_ok=True)
    if (REPO / ".venv").exists():
        (repo / ".venv").symlink_to(REPO / ".venv")
    if (REPO.parent / "shared").exists():  # ../shared/data/... as in the checkout
        (ws / "shared").symlink_to(REPO.parent / "shared")
    path = tmp_path / "script.sh"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "LTR_VERBOSE", "TORCH_LOGS", "VIRTUAL_ENV")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    log = tmp_path / "script.log"
    t0 = time.monotonic()
    with open(log, "w") as fh:  # a file, not a pipe: a server left running would hold a pipe open
        proc = subprocess.Popen(["bash", str(path)], cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            _kill_group(proc)
    return rc, log.read_text(errors="replace"), time.monotonic() - t0


def test_script_runner_ends_what_the_script_left(tmp_path):
    script = (f"set -euo pipefail\ntest -f configs/smoke.yaml\ncommand -v {Path(sys.executable).name}\n"
              f"{sys.executable} -c 'import time; time.sleep(120)' &\necho $! > {tmp_path}/pid\necho done\n")
    rc, out, took = run_in_copy(script, tmp_path, timeout=60)
    assert rc == 0 and "done" in out, out
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # ended (and reaped: it was re-parented away from us, so no zombie of ours)
    rc, out, took = run_in_copy("sleep 60\n", tmp_path / "slow", timeout=1)
    assert rc is None and took < 30


def test_readme_quickstart_runs(tmp_path):
    """Every ```bash block of README.md's Quickstart, in order, as one `set -euo pipefail` script (run_in_copy)."""
    quick = section(README.read_text(), "Quickstart")
    assert quick is not None, "README.md has no `## Quickstart` section"
    blocks = code_blocks(quick, {"bash"})
    assert blocks, "README.md's Quickstart has no ```bash block"
    script = "set -euo pipefail\n" + "\n".join(blocks)
    busy = sorted(p for p in _ports(script) if not _port_free(p))
    if busy:
        pytest.skip(f"port(s) {busy} the Quickstart serves on are in use on this machine")
    timeout = float(os.environ.get("LTR_QUICKSTART_TIMEOUT", 900))
    rc, out, took = run_in_copy(script, tmp_path, timeout)
    assert rc is not None, f"the Quickstart ran over {timeout:.0f} s; its output's end:\n{out[-4000:]}"
    assert rc == 0, f"the Quickstart failed (exit {rc}, {took:.0f} s); its output's end:\n{out[-4000:]}"
    print(f"Quickstart: {took:.0f} s")
