"""The README and every `docs/*.md` page stay true.

- every ```python block runs (in a temporary folder; the ones that train are sized to take
  seconds), and whatever it registered is unregistered afterwards;
- every ```bash command line is checked: a `lightning-mtl …` line is parsed by the real command
  line in-process (`--print_config` must exit 0), a `make TARGET VAR=… …` line must name a
  Makefile target and variables, and the `lightning-mtl` commands `make -n` prints for it are
  parsed too; any other command is allowed only in a block marked `<!-- not run: REASON -->`
  (whose `lightning-mtl` arguments and `python -m` modules are still checked);
- links point at files and headings that exist, inline code names modules, objects and paths
  that exist, no page refers to SPEC sections, the README is at most 250 lines and its docs
  table links every page, and `docs/architecture.md` maps every module with its layer as
  `tests/test_architecture.py` enforces it.

Each checker is also run on a wrong input, so that a checker that finds nothing fails.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 250

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->")
#: commands `make -n` prints that start the CLI (`.venv/bin/lightning-mtl …`)
CLI_NAME = "lightning-mtl"
CLI_MODULE = "lightning_mtl.cli.main"


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    not_run: str | None  # the reason of a `<!-- not run: … -->` marker right before the fence

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(text: str, page: Path) -> list[Block]:
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.fullmatch(before.strip())
        found.append(
            Block(
                page=page,
                line=text.count("\n", 0, match.start()) + 1,
                lang=match.group(1),
                code=match.group(2),
                not_run=marker.group(1) if marker else None,
            )
        )
    return found


BLOCKS = [block for page in PAGES for block in blocks_of(page.read_text(), page)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]
BASH = [b for b in BLOCKS if b.lang == "bash"]


def _strip_code(text: str) -> str:
    """The page without its fenced blocks (headings and links in code do not count)."""
    return FENCE.sub("", text)


# -- python blocks ---------------------------------------------------------------------------


def _import_everything() -> None:
    """Import every module of both packages, so that every registry holds its built-ins before
    a block runs (a block's first import must not look like a registration)."""
    for package in ("lightning_mtl", "datamodules"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            importlib.import_module(info.name)


def _registries() -> dict[int, object]:
    from lightning_mtl.registry import Registry

    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("lightning_mtl", "datamodules")):
            continue
        for value in vars(module).values():
            if isinstance(value, Registry):
                found[id(value)] = value
    return found


@pytest.fixture(scope="module")
def registries():
    _import_everything()
    return _registries()


def test_docs_have_python_examples():
    assert len(PYTHON) >= 10
    assert any(b.page == README for b in PYTHON)


@pytest.mark.parametrize("block", PYTHON, ids=[b.where for b in PYTHON])
def test_python_block_runs(block, registries, tmp_path, monkeypatch):
    assert block.not_run is None, f"{block.where}: python blocks always run"
    monkeypatch.chdir(tmp_path)
    before = {key: reg.names() for key, reg in registries.items()}
    try:
        exec(compile(block.code, block.where, "exec"), {"__name__": "__docs__"})
    finally:
        for key, reg in registries.items():
            for name in reg.names():
                if name not in before[key]:
                    reg.unregister(name)
    assert _registries().keys() == registries.keys(), "a block created a registry"


def test_registrations_are_undone(registries, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = next(b for b in PYTHON if '@register_task("fg")' in b.code)
    test_python_block_runs(code, registries, tmp_path, monkeypatch)
    from lightning_mtl.tasks import list_tasks

    assert "fg" not in list_tasks()


# -- bash blocks -----------------------------------------------------------------------------


def command_lines(code: str) -> Iterator[list[str]]:
    """Shell command lines of a block: `\\` continuations joined, comments dropped, split at
    `&&`, `||`, `;` and `|`."""
    joined = re.sub(r"\\\n", " ", code)
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", "||", ";", "|"):
                if command:
                    yield command
                command = []
            else:
                command.append(word)


def cli_problem(args: list[str]) -> str | None:
    """None when the real `lightning-mtl` accepts `args` (`--print_config` exits 0)."""
    from lightning_mtl.cli.main import main

    try:
        main([*args, "--print_config"])
    except SystemExit as exit_:
        if exit_.code in (0, None):
            return None
        return f"`lightning-mtl {shlex.join(args)}` exits {exit_.code}"
    except Exception as error:  # any failure is the finding
        return f"`lightning-mtl {shlex.join(args)}` raised {type(error).__name__}: {error}"
    return f"`lightning-mtl {shlex.join(args)} --print_config` returned without exiting"


def _makefile() -> tuple[set[str], set[str]]:
    text = (ROOT / "Makefile").read_text()
    targets = set()
    for match in re.finditer(r"^([\w .-]+?)\s*:(?!=)", text, re.MULTILINE):
        targets.update(match.group(1).split())
    variables = set(re.findall(r"^(\w+)\s*[?:]?=", text, re.MULTILINE))
    return targets, variables


def make_problems(words: list[str]) -> tuple[list[str], list[list[str]]]:
    """Problems of a `make …` line, and the `lightning-mtl` argument lists `make -n` prints."""
    targets, variables = _makefile()
    problems = []
    named = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
    if not named:
        problems.append(f"`{shlex.join(words)}` names no target")
    problems += [f"`make {t}`: no such Makefile target" for t in named if t not in targets]
    assigned = [w.split("=", 1)[0] for w in words[1:] if "=" in w]
    problems += [
        f"`make … {v}=`: no such Makefile variable" for v in assigned if v not in variables
    ]
    if problems:
        return problems, []
    dry = subprocess.run(
        ["make", "-n", "--no-print-directory", *words[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if dry.returncode != 0:
        return [f"`make -n {shlex.join(words[1:])}` failed: {dry.stderr.strip()}"], []
    calls = []
    for command in command_lines(dry.stdout):
        for i, word in enumerate(command):
            if Path(word).name == CLI_NAME:
                calls.append(command[i + 1 :])
                break
    return [], calls


def _embedded_cli_calls(words: list[str]) -> tuple[list[str], list[list[str]]]:
    """In a command that is not run: `… lightning-mtl ARGS` / `… -m MODULE ARGS`: problems with
    MODULE, and the `lightning-mtl` arguments to parse."""
    problems, calls = [], []
    for i, word in enumerate(words):
        if Path(word).name == CLI_NAME and i > 0:
            calls.append(words[i + 1 :])
            break
        if word == "-m" and i + 1 < len(words):
            module = words[i + 1]
            spec = importlib.util.find_spec(module)
            if spec is None:
                problems.append(f"`-m {module}`: no such module")
            elif spec.submodule_search_locations is not None and (
                importlib.util.find_spec(f"{module}.__main__") is None
            ):
                problems.append(f"`-m {module}`: a package without __main__")
            elif module == CLI_MODULE:
                calls.append(words[i + 2 :])
            break
    return problems, calls


def bash_problems(block: Block) -> list[str]:
    problems: list[str] = []
    calls: list[list[str]] = []
    for words in command_lines(block.code):
        for word in words:
            path = re.match(r"experiments/[\w./-]+\.ya?ml$", word)
            if path and not (ROOT / word).is_file():
                problems.append(f"{word} does not exist")
        if words[0] == CLI_NAME:
            calls.append(words[1:])
        elif words[0] == "make":
            found, made = make_problems(words)
            problems += found
            calls += made
        elif block.not_run is None:
            problems.append(
                f"`{shlex.join(words)}` is neither `lightning-mtl` nor `make`: mark the block "
                "`<!-- not run: REASON -->` if it cannot run here"
            )
        else:
            found, embedded = _embedded_cli_calls(words)
            problems += found
            calls += embedded
    problems += [p for args in calls if (p := cli_problem(args))]
    return [f"{block.where}: {p}" for p in problems]


def test_docs_have_bash_examples():
    assert len(BASH) >= 10
    assert any(b.not_run for b in BASH)


@pytest.mark.parametrize("block", BASH, ids=[b.where for b in BASH])
def test_bash_block_commands_exist(block, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the commands name paths of the repository
    problems = bash_problems(block)
    capsys.readouterr()
    assert not problems, "\n".join(problems)


def test_bash_checker_finds_wrong_commands(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    page = ROOT / "docs" / "x.md"

    def check(code: str, not_run: str | None = None) -> list[str]:
        found = bash_problems(Block(page, 1, "bash", code, not_run))
        capsys.readouterr()
        return found

    good = "lightning-mtl fit --config experiments/synthetic.yaml --trainer.max_epochs 1\n"
    assert check(good) == []
    assert check("lightning-mtl fit --config experiments/synthetic.yaml --model.no_such 1\n")
    assert check("lightning-mtl fit --config experiments/missing.yaml\n")
    assert check("lightning-mtl no-such-job\n")
    assert check("make no-such-target\n")
    assert check("make train NO_SUCH_VARIABLE=1\n")
    assert check('make train ARGS="--model.no_such 1"\n')  # make -n's command is parsed
    assert check("torchrun -m lightning_mtl.cli.main fit\n")  # not marked
    assert check("srun lightning-mtl fit --model.no_such 1\n", not_run="cluster")
    assert check("torchrun -m lightning_mtl.cli fit\n", not_run="cluster")  # no __main__
    assert check("wandb sweep experiments/sweeps/synthetic.yaml\n", not_run="W&B") == []
    assert check("make train LAMBDA=0 # a comment\n") == []


def test_not_run_marker_is_read():
    text = "x\n\n<!-- not run: needs W&B -->\n```bash\nwandb login\n```\n\n```bash\nmake\n```\n"
    first, second = blocks_of(text, ROOT / "docs" / "x.md")
    assert first.not_run == "needs W&B" and second.not_run is None
    assert list(command_lines("a \\\n  b # c\nd && e\n")) == [["a", "b"], ["d"], ["e"]]


# -- links, names, SPEC, README size, docs table ---------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {
        _slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", _strip_code(page.read_text()), re.M)
    }


def link_problems(page: Path, text: str) -> list[str]:
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _strip_code(text)):
        if re.match(r"\w+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{page.name}: link {target}: {path} does not exist")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            problems.append(f"{page.name}: link {target}: no heading #{anchor} in {file.name}")
    return problems


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        try:
            for attr in parts[end:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def name_problems(page: Path, text: str) -> list[str]:
    """Inline code naming `lightning_mtl.…`/`datamodules.…` objects or repository paths."""
    problems = []
    for span in re.findall(r"`([^`\n]+)`", _strip_code(text)):
        for dotted in re.findall(r"(?<![\w/.])((?:lightning_mtl|datamodules)(?:\.\w+)+)", span):
            if not _resolves(dotted):
                problems.append(f"{page.name}: `{dotted}` does not exist")
        for path in re.findall(
            r"(?<![\w/.])((?:lightning_mtl|datamodules|experiments|tests|docs)/[\w./-]*)", span
        ):
            if not (ROOT / path).exists():
                problems.append(f"{page.name}: path {path} does not exist")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_and_names_exist(page):
    text = page.read_text()
    problems = link_problems(page, text) + name_problems(page, text)
    assert not problems, "\n".join(problems)


def test_link_and_name_checkers_find_wrong_ones():
    page = ROOT / "docs" / "x.md"
    assert link_problems(page, "[a](missing.md)")
    assert link_problems(page, "[a](sparsity.md#no-such-heading)")
    assert link_problems(page, "[a](sparsity.md#prox-operators)") == []
    assert name_problems(page, "`lightning_mtl.sparsity.NoSuchThing`")
    assert name_problems(page, "`lightning_mtl.no_such_module.x`")
    assert name_problems(page, "`lightning_mtl/no_such.py`")
    assert name_problems(page, "`lightning_mtl.sparsity.ProxAdamW.set_lambda`") == []
    assert _slug("Gallery: the synthetic smoke sweep") == "gallery-the-synthetic-smoke-sweep"
    assert _slug("`make lomt` on this 2-core CPU") == "make-lomt-on-this-2-core-cpu"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_no_spec_references(page):
    assert not re.search(r"SPEC\s*§", page.read_text()), f"{page.name} refers to SPEC sections"


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


def _docs_table_links(text: str) -> set[str]:
    section = re.search(r"^## Documentation\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert section, "README.md has no '## Documentation' section"
    rows = [line for line in section.group(1).splitlines() if line.startswith("|")]
    return {link for row in rows for link in re.findall(r"\]\((docs/[\w-]+\.md)\)", row)}


def test_readme_docs_table_links_every_page():
    linked = _docs_table_links(README.read_text())
    pages = {f"docs/{p.name}" for p in DOCS}
    assert pages - linked == set(), "docs pages missing from the README's docs table"
    assert linked - pages == set(), "the README's docs table links pages that do not exist"
    assert _docs_table_links("## Documentation\n| [a](docs/a.md) | x |\n## Next\n") == {"docs/a.md"}


# -- the architecture page -------------------------------------------------------------------

ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _enforced_layers() -> dict[str, int]:
    tree = ast.parse((ROOT / "tests" / "test_architecture.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "LAYERS":
            return ast.literal_eval(node.value)
    raise AssertionError("tests/test_architecture.py has no LAYERS")


def _modules() -> dict[str, str]:
    """Repository path of every module file → dotted module name."""
    found = {}
    for package in ("lightning_mtl", "datamodules"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[path.relative_to(ROOT).as_posix()] = ".".join(parts)
    return found


def _layer(module: str, layers: dict[str, int]) -> int | None:
    matches = [p for p in layers if module == p or module.startswith(p + ".")]
    return layers[max(matches, key=len)] if matches else None


def layer_table_problems(text: str, layers: dict[str, int]) -> list[str]:
    documented: dict[str, int] = {}
    for layer, modules in re.findall(r"^\|\s*(\d)\s*\|[^|]*\|(.*)\|\s*$", text, re.MULTILINE):
        for name in re.findall(r"`((?:lightning_mtl|datamodules)[\w.]*)`", modules):
            documented[name] = int(layer)
    modules = set(_modules().values())
    existing = {
        p: n for p, n in layers.items() if any(m == p or m.startswith(p + ".") for m in modules)
    }
    problems = [
        f"layer table: {p} is layer {n}, the page says {documented.get(p)}"
        for p, n in existing.items()
        if documented.get(p) != n
    ]
    problems += [f"layer table: {p} is not in LAYERS" for p in documented if p not in layers]
    return problems


def module_map_problems(text: str, layers: dict[str, int]) -> list[str]:
    rows = dict(re.findall(r"^\|\s*`([\w/]+\.py)`\s*\|\s*([\d—-]+)\s*\|", text, re.MULTILINE))
    modules = _modules()
    problems = [
        f"module map: {path} is missing"
        for path in modules
        if path not in rows and not path.endswith("__init__.py")
    ]
    for path, layer in rows.items():
        if path not in modules:
            problems.append(f"module map: {path} does not exist")
            continue
        expected = _layer(modules[path], layers)
        if layer != ("—" if expected is None else str(expected)):
            problems.append(f"module map: {path} is layer {expected}, the page says {layer}")
    return problems


def test_architecture_page_matches_the_enforced_layers():
    layers = _enforced_layers()
    text = ARCHITECTURE.read_text()
    problems = layer_table_problems(text, layers) + module_map_problems(text, layers)
    assert not problems, "\n".join(problems)


def test_architecture_page_says_where_changes_go():
    text = ARCHITECTURE.read_text()
    section = re.search(r"^## Where a change goes\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert section, "docs/architecture.md has no '## Where a change goes' section"
    kinds = "task", "loss weighting", "prox operator", "dataset format", "report figure"
    for kind in (*kinds, "benchmark", "backbone", "head"):
        assert re.search(rf"^\| a new {kind} \|", section.group(1), re.MULTILINE), kind


def test_architecture_checkers_find_wrong_maps():
    layers = _enforced_layers()
    text = ARCHITECTURE.read_text()
    assert module_map_problems(text.replace("`lightning_mtl/runs.py` | 1", "x"), layers)
    assert module_map_problems(
        text.replace("`lightning_mtl/runs.py` | 1", "`lightning_mtl/runs.py` | 2"), layers
    )
    assert module_map_problems(text + "\n| `lightning_mtl/gone.py` | 1 | x |\n", layers)
    assert layer_table_problems(text.replace("`lightning_mtl.runs`, ", ""), layers)
    assert layer_table_problems(text + "\n| 2 | x | `lightning_mtl.runs` |\n", layers)
