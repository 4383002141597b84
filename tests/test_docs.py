"""Every Python example in the docs runs, so the docs cannot drift from the code.

Markdown pages: every fenced block whose info string starts with ``python`` (or ``py``) in
``docs/**/*.md`` and in ``README.md`` is one test case, with the id ``path:line`` of its
opening fence. Conventions for writers:

* Blocks of one page run in order and share one namespace, like cells of a notebook: a page
  may define a class in one block and use it in the next. The namespace is a fresh module
  per page (its ``__name__`` is not ``"__main__"``, so ``if __name__ == "__main__":`` bodies
  do not run; call what you want to show directly).
* A block may use top-level ``await``; it then runs in its own ``asyncio.run``. Objects tied
  to an event loop (open clients, systems) cannot be carried into a later block, so open and
  close them within one block (``async with``).
* To show code that must not run (planned API, a fragment, an intentional error), mark the
  fence ```` ```python no-run ````. Nothing else skips a block.
* Warnings are errors here, as everywhere in the suite.

Tracebacks name the ``.md`` file and the line in it, because each block is compiled with the
page as its filename and its own line offset.

Scripts: every ``docs/examples/*.py`` runs in a subprocess (``python -W error``, from the
repository root) and must exit with status 0 within 60 seconds.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS = REPO_ROOT / "docs"
EXAMPLES = DOCS / "examples"
SCRIPT_TIMEOUT = 60

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_PYTHON_LANGUAGES = frozenset({"python", "py"})


@dataclass(frozen=True)
class Block:
    """One fenced Python block of a Markdown page."""

    page: Path
    index: int  # position among the page's Python blocks
    line: int  # 1-based line of the opening fence
    source: str
    run: bool

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT).as_posix()}:{self.line}"


def parse_blocks(page: Path, text: str) -> list[Block]:
    """The Python blocks of a Markdown text (CommonMark fences, backticks or tildes)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        words = opening["info"].split()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not _closes(lines[j], fence):
            body.append(_strip_indent(lines[j], indent))
            j += 1
        if words and words[0].lower() in _PYTHON_LANGUAGES:
            # Blank lines in front keep the block's line numbers equal to the page's.
            source = "\n" * (i + 1) + "\n".join(body) + "\n"
            blocks.append(Block(page, len(blocks), i + 1, source, run="no-run" not in words[1:]))
        i = j + 1  # an unclosed fence runs to the end of the page, as in CommonMark
    return blocks


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    if len(line) - len(line.lstrip(" ")) > 3:
        return False
    return stripped.startswith(fence) and set(stripped) == {fence[0]}


def _strip_indent(line: str, indent: int) -> str:
    removable = len(line) - len(line.lstrip(" "))
    return line[min(indent, removable) :]


def _pages() -> list[Path]:
    pages = sorted(DOCS.rglob("*.md")) if DOCS.is_dir() else []
    readme = REPO_ROOT / "README.md"
    return [*pages, readme] if readme.is_file() else pages


def _collect(pages: list[Path]) -> list[Block]:
    return [b for page in pages for b in parse_blocks(page, page.read_text(encoding="utf-8"))]


BLOCKS = _collect(_pages())
_BLOCKS_BY_PAGE: dict[Path, list[Block]] = {}
for _block in BLOCKS:
    _BLOCKS_BY_PAGE.setdefault(_block.page, []).append(_block)


@dataclass
class _PageRun:
    """The shared namespace of one page and how far through its blocks it has run."""

    module: types.ModuleType
    next_index: int = 0
    failed: list[str] = field(default_factory=list)


_RUNS: dict[Path, _PageRun] = {}


def _new_run(page: Path) -> _PageRun:
    slug = re.sub(r"\W", "_", page.relative_to(REPO_ROOT).as_posix())
    module = types.ModuleType(f"_docs_{slug}", f"Examples of {page.name}")
    module.__file__ = str(page)
    # Registered so that pickling, typing.get_type_hints and pydantic can find classes that
    # a page defines, as they would for classes in a real module.
    sys.modules[module.__name__] = module
    return _PageRun(module)


def _execute(block: Block, namespace: dict[str, Any]) -> None:
    code = compile(
        block.source,
        str(block.page),
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        dont_inherit=True,
    )
    if code.co_flags & inspect.CO_COROUTINE:
        asyncio.run(eval(code, namespace))
    else:
        exec(code, namespace)


def run_block(block: Block) -> None:
    """Run ``block`` after the page's earlier blocks, in the page's shared namespace."""
    run = _RUNS.get(block.page)
    if run is None or run.next_index > block.index:
        run = _RUNS[block.page] = _new_run(block.page)
    # Normally the earlier blocks have just run as their own test cases; when a single block
    # is selected (pytest -k, a node id), run its predecessors first so it sees their names.
    for earlier in _BLOCKS_BY_PAGE[block.page][run.next_index : block.index]:
        if earlier.run:
            try:
                _execute(earlier, run.module.__dict__)
            except Exception:
                run.failed.append(earlier.id)
    run.next_index = block.index + 1
    try:
        _execute(block, run.module.__dict__)
    except Exception as exc:
        if run.failed:
            exc.add_note(f"earlier blocks of this page failed first: {', '.join(run.failed)}")
        run.failed.append(block.id)
        raise


_WORKDIRS: dict[Path, Path] = {}


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block_runs(
    block: Block, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not block.run:
        pytest.skip("fence marked no-run")
    # Pages write files as a user would ("app.db"); each page gets its own directory for them.
    workdir = _WORKDIRS.get(block.page)
    if workdir is None:
        workdir = _WORKDIRS[block.page] = tmp_path_factory.mktemp(block.page.stem)
    monkeypatch.chdir(workdir)
    run_block(block)


def test_docs_have_python_blocks() -> None:
    in_docs = [b for b in BLOCKS if b.page.is_relative_to(DOCS) and b.run]
    assert in_docs, f"no runnable ```python blocks found under {DOCS}; is the collector broken?"


SCRIPTS = sorted(EXAMPLES.glob("*.py")) if EXAMPLES.is_dir() else []


@pytest.mark.parametrize(
    "script", SCRIPTS, ids=[s.relative_to(REPO_ROOT).as_posix() for s in SCRIPTS]
)
def test_example_script_runs(script: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"{script.name} exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


def test_readme_demo_script_exists() -> None:
    # The README's first command runs this script; keep the two in step.
    assert (EXAMPLES / "chains_demo.py").is_file()


# The collector itself is tested on synthetic pages, so a parsing bug cannot hide examples.

_SAMPLE = """\
Intro text.

```python
x = 1
```

```py no-run
this is not python
```

- a list item:

  ```python
  y = x + 1
  ```

~~~~python title="tilde"
```python
inner fence is content
```
~~~~

```pycon
>>> skipped, not python
```

``` python
z = 3
```
"""


def test_parse_blocks_finds_python_fences() -> None:
    blocks = parse_blocks(REPO_ROOT / "docs" / "sample.md", _SAMPLE)
    assert [(b.line, b.run) for b in blocks] == [
        (3, True),
        (7, False),
        (13, True),
        (17, True),
        (27, True),
    ]
    assert blocks[0].source.splitlines()[3] == "x = 1"
    assert blocks[2].source.strip() == "y = x + 1"
    assert blocks[3].source.strip() == "```python\ninner fence is content\n```"
    assert blocks[0].id == "docs/sample.md:3"


def test_block_line_numbers_match_the_page() -> None:
    page = REPO_ROOT / "docs" / "sample.md"
    text = "# Title\n\n```python\nvalue = 1\nraise ValueError(value)\n```\n"
    (block,) = parse_blocks(page, text)
    with pytest.raises(ValueError, match="1") as info:
        _execute(block, {})
    frame = info.traceback[-1]
    assert (str(frame.path), frame.lineno + 1) == (str(page), 5)


def test_blocks_share_a_namespace_and_support_top_level_await() -> None:
    text = (
        "```python\nimport asyncio\nclass A:\n    n = 2\n```\n"
        "```python\nawait asyncio.sleep(0)\nresult = A.n * 21\n```\n"
    )
    first, second = parse_blocks(REPO_ROOT / "docs" / "sample.md", text)
    namespace: dict[str, Any] = {}
    _execute(first, namespace)
    _execute(second, namespace)
    assert namespace["result"] == 42
