"""Every code example in README.md and docs/*.md runs (or, for training commands, parses).

The rule, per fenced block:

* ```` ```python ```` blocks run as they are, each in its own Python process, in a scratch folder that holds
  ``configs/`` (a link to the repository's) and an empty ``docs/img/``. Write them small enough to finish in
  seconds.
* ```` ```bash ```` blocks: every ``crrelu-lightning fit|validate|test|predict …`` command is parsed with
  ``--print_config`` appended — configs found and composed, every override a valid key and value, ``Literal``
  choices checked — without training; ``crrelu-lightning compare …`` runs with ``--dry-run``;
  ``crrelu-lightning eafo …`` runs as written. Other commands (pip, apt, ``data fetch``, ``tensorboard``,
  ``torchrun``, ``export``) and commands using shell variables (``$X``) are not run.
* Other blocks (yaml, text, layout sketches) are not run.
* A block directly preceded by the line ``<!-- excerpt -->`` (invisible when rendered; text may follow, e.g.
  ``<!-- excerpt: needs transformers and an exported model -->``) is an excerpt and is skipped.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
EXCERPT = re.compile(r"^\s*<!--\s*excerpt\b")
CLI_PARSE = {"fit", "validate", "test", "predict"}

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    excerpt: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO).as_posix()}:{self.line}"


def code_blocks(path: Path) -> List[Block]:
    """Fenced blocks of a markdown file, with the excerpt marker of the line before each (blank lines between)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2).lower(), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        blocks.append(Block(path, start + 1, lang, "\n".join(body) + "\n", bool(EXCERPT.match(prev))))
        i += 1
    return blocks


def shell_commands(text: str) -> List[List[str]]:
    """Simple commands of a bash block: continuation lines joined, comments dropped, split at && || ; |."""
    joined = re.sub(r"\\\n", " ", text)
    commands = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # unbalanced quotes: not a simple command
            continue
        current: List[str] = []
        for tok in tokens + [";"]:
            if tok in ("&&", "||", ";", "|", "&", ";;"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(tok)
    return commands


def checked_command(tokens: List[str]):
    """The argv to run for a documented command, or None when the rule says it is not run."""
    if any("$" in t for t in tokens) or len(tokens) < 2:
        return None
    if tokens[0] == "crrelu-lightning":
        args = tokens[1:]
    elif tokens[:3] == ["python", "-m", "crrelu_lightning"] or tokens[:3] == ["python3", "-m", "crrelu_lightning"]:
        args = tokens[3:]
    else:
        return None
    if not args:
        return None
    if args[0] in CLI_PARSE:
        return args + ["--print_config"]
    if args[0] == "compare" and not {"--report-csv", "--collect", "--report-only"} & set(args):
        return args + ["--dry-run"] if "--" not in args else args[:args.index("--")] + ["--dry-run"] + args[args.index("--"):]
    if args[0] == "eafo":
        return args
    return None


BLOCKS = [b for path in DOCS for b in code_blocks(path)]
PYTHON = [b for b in BLOCKS if b.lang in ("python", "py") and not b.excerpt]
COMMANDS = [(b, cmd) for b in BLOCKS if b.lang in ("bash", "sh", "shell") and not b.excerpt
            for cmd in (checked_command(t) for t in shell_commands(b.text)) if cmd]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("docs_examples")
    (folder / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    (folder / "docs" / "img").mkdir(parents=True)
    return folder


def test_parser_follows_the_rule(tmp_path):
    # The extraction itself, on a file written here: excerpt marker, indented fences, continuations, chains.
    md = tmp_path / "x.md"
    md.write_text(
        "text\n\n<!-- excerpt: illustration -->\n```python\nraise SystemExit(1)\n```\n\n"
        "- item\n  ```bash\n  crrelu-lightning fit --config a.yaml \\\n    --model.activation gelu  # note\n"
        "  pip install x && crrelu-lightning test --config a.yaml; echo $HOME\n  ```\n"
    )
    blocks = code_blocks(md)
    assert [(b.lang, b.excerpt, b.line) for b in blocks] == [("python", True, 4), ("bash", False, 9)]
    cmds = [checked_command(c) for c in shell_commands(blocks[1].text)]
    assert cmds == [["fit", "--config", "a.yaml", "--model.activation", "gelu", "--print_config"], None,
                    ["test", "--config", "a.yaml", "--print_config"], None]


def test_docs_have_examples_to_check():
    assert len(PYTHON) >= 4 and len(COMMANDS) >= 10, (len(PYTHON), len(COMMANDS))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.where)
def test_python_example_runs(block, scratch):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", block.text], cwd=scratch, env=env, capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 0, f"{block.where} failed:\n{proc.stderr[-3000:]}"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block,argv", COMMANDS, ids=[f"{b.where}:{a[0]}" for b, a in COMMANDS])
def test_cli_example_parses(block, argv, scratch, monkeypatch, capsys):
    from crrelu_lightning.cli import main

    monkeypatch.chdir(scratch)
    try:
        code = main(list(argv))
    except SystemExit as done:  # --print_config exits after printing
        code = done.code
    err = capsys.readouterr().err
    assert code in (0, None), f"{block.where}: crrelu-lightning {shlex.join(argv)}\n{err[-3000:]}"
