"""Every `covidct ...` command in the README, the docs and the notebooks' markdown works as written.

Commands in fenced code blocks (line continuations joined, comments dropped) must parse with the CLI's own
parser; each ``--config`` / grid they name must load (a file or a shipped config name, with the command's
``--set`` overrides) or be written by an earlier command of the same document (``covidct config copy``); each run
folder they read (``--run``, ``segment predict --model``, ``--set model.weights=RUN/model.keras``) must be made by
an earlier command of the same document or be an obvious placeholder (``runs/X``, ``runs/<name>``, ``...``);
``--label-map`` keys must be exactly the labels the dataset's loader gives (its registry entry) and its values
project classes; ``--root`` must not point outside the working folder (no path of one machine's setup).
Inline mentions (```covidct audit my-ct --strict``` in running text) must name a real subcommand and real
options. The cheap commands (``models``, ``data``, ``config list|show``, ``--help``) run for real.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from covidct.cli import build_parser, main
from covidct.data.datasets import DATASETS, PROJECT_CLASSES
from covidct.errors import CovidctError

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(covidct [a-z][^`]*)`")
PLACEHOLDER = re.compile(r"\.\.\.|<[^>]+>|^(runs/)?[A-Z][A-Z0-9_-]*$|^/path/to/")
RUN_CHEAP = {"models", "data"}


def documents() -> list[Path]:
    """The documents whose commands a user copies: README, CONTRIBUTING, data/README, docs/, notebooks."""
    found = [REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "data" / "README.md"]
    found += sorted((REPO / "docs").rglob("*.md")) + sorted((REPO / "notebooks").rglob("*.ipynb"))
    return [path for path in found if path.is_file() and ".ipynb_checkpoints" not in path.parts]


def document_text(path: Path) -> str:
    """Markdown of a document (a notebook's markdown cells, one after another)."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text()


@dataclass
class Command:
    """One documented command: where it is, its words after ``covidct``, and whether it is a full command."""

    where: str
    text: str
    argv: list
    inline: bool = False
    placeholders: list = field(default_factory=list)


def strip_comment(line: str) -> str:
    """Drop a shell comment (`` # ...`` outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _command(where: str, line: str, inline: bool) -> Command | None:
    line = strip_comment(line).strip()
    for prefix in ("$ ", "!", "%"):
        line = line.removeprefix(prefix)
    if not line.startswith("covidct ") and line != "covidct":
        return None
    argv = shlex.split(line)[1:]
    return Command(where, line, argv, inline, [word for word in argv if PLACEHOLDER.search(word)])


def extract_commands(name: str, text: str) -> list[Command]:
    """Commands of a markdown text in document order: fenced blocks are full commands, inline spans mentions."""
    found: list[tuple[int, Command]] = []
    for block in FENCE.finditer(text):
        logical, start = "", None
        for offset, raw in enumerate(block.group(1).splitlines()):
            start = offset if start is None else start
            line = strip_comment(raw)
            if line.endswith("\\"):
                logical += line[:-1] + " "
                continue
            logical += line
            line_no = text.count("\n", 0, block.start(1)) + start + 1
            command = _command(f"{name}:{line_no}", logical, inline=False)
            if command:
                found.append((block.start(1) + start, command))
            logical, start = "", None
    outside = FENCE.sub(lambda m: " " * len(m.group(0)), text)
    for span in INLINE.finditer(outside):
        command = _command(f"{name}:{text.count(chr(10), 0, span.start()) + 1}", span.group(1), inline=True)
        if command:
            found.append((span.start(), command))
    return [command for _, command in sorted(found, key=lambda item: item[0])]


def parse(argv: list) -> argparse.Namespace:
    """Parse with the CLI's parser without running anything; a usage error becomes a CovidctError."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            return build_parser().parse_args(argv)
        except SystemExit as stop:
            if stop.code == 0:  # --help
                return argparse.Namespace(command="help")
            raise CovidctError(stderr.getvalue().strip().splitlines()[-1]) from None


def _subparser(parser: argparse.ArgumentParser, words: list) -> tuple[argparse.ArgumentParser, list]:
    """The (sub)parser that the leading words select, and the words after them."""
    while words:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or words[0] not in actions[0].choices:
            break
        parser, words = actions[0].choices[words[0]], words[1:]
    return parser, words


def check_mention(command: Command) -> list[str]:
    """An inline mention names a real subcommand and only options that subcommand has."""
    parser, rest = _subparser(build_parser(), list(command.argv))
    if parser.prog == "covidct":
        return [f"{command.where}: `{command.text}`: {command.argv[0]!r} is not a covidct subcommand"]
    options = {option for action in parser._actions for option in action.option_strings}
    return [f"{command.where}: `{command.text}`: {parser.prog} has no option {word}"
            for word in rest if word.startswith("--") and word.split("=")[0] not in options]


def _norm(path) -> str:
    return Path(str(path)).as_posix().rstrip("/")


class DocumentChecker:
    """Checks one document's commands in order, remembering the run folders and files earlier ones make."""

    def __init__(self):
        self.runs: set[str] = set()
        self.files: set[str] = set()
        self.placeholders = 0
        self.ran: list[str] = []

    def check(self, command: Command) -> list[str]:
        if command.inline:
            return check_mention(command)
        try:
            args = parse(command.argv)
        except CovidctError as error:
            return [f"{command.where}: `{command.text}` does not parse: {error}"]
        self.placeholders += bool(command.placeholders)
        problems: list[str] = []
        for check in (self._config, self._runs_read, self._label_map, self._root):
            try:
                problems += [f"{command.where}: `{command.text}`: {p}" for p in check(args, command)]
            except CovidctError as error:
                problems.append(f"{command.where}: `{command.text}`: {error}")
        with contextlib.suppress(CovidctError):  # a config that does not load is reported above
            self._remember(args)
        return problems

    def _is_placeholder(self, value) -> bool:
        return value is None or bool(PLACEHOLDER.search(str(value)))

    def _config(self, args, command) -> list[str]:
        """The config or grid loads (a file or a shipped name, with the command's overrides), or was made earlier."""
        from covidct.config import load_config

        if args.command == "grid" and not self._is_placeholder(args.grid):
            from covidct.train.grid import load_grid

            load_grid(args.grid, args.set)
        elif args.command in ("train", "features") and not self._is_placeholder(args.config):
            if _norm(args.config) not in self.files:
                shortcuts = [f"{key}={value}" for key, value in (("model.name", getattr(args, "model", None)),
                                                                  ("data.dataset", getattr(args, "dataset", None))) if value]
                load_config(args.config, [*shortcuts, *args.set])
        return []

    def _runs_read(self, args, command) -> list[str]:
        read = []
        if args.command in ("evaluate", "gradcam", "predict-volume") or (
            args.command == "segment" and args.segment_action == "evaluate"
        ):
            read.append(("--run", args.run))
        if args.command == "segment" and args.segment_action == "predict":
            read.append(("--model", args.model))
        for item in getattr(args, "set", None) or ():
            key, _, value = item.partition("=")
            if key == "model.weights":
                read.append(("model.weights", str(Path(value).parent) if value.endswith(".keras") else value))
        return [f"{option} {value} is not made by an earlier command of this document (nor a placeholder)"
                for option, value in read if not self._is_placeholder(value) and _norm(value) not in self.runs]

    def _label_map(self, args, command) -> list[str]:
        text = getattr(args, "label_map", None)
        if not text or self._is_placeholder(text):
            return []
        from covidct.train.data import parse_label_map

        mapping = parse_label_map(text)
        spec = DATASETS.get(args.dataset)
        if spec is None:
            return [f"--label-map given without a registered --dataset ({args.dataset!r})"]
        problems = []
        if spec.classes and set(mapping) != set(spec.classes):
            problems.append(f"--label-map keys {sorted(mapping)} are not the labels {spec.name!r} loads as "
                            f"{sorted(spec.classes)}")
        wrong = sorted(set(mapping.values()) - set(PROJECT_CLASSES) - {"drop"})
        if wrong:
            problems.append(f"--label-map values {wrong} are not project classes {list(PROJECT_CLASSES)} (or 'drop')")
        return problems

    def _root(self, args, command) -> list[str]:
        root = getattr(args, "root", None)
        if root and not self._is_placeholder(root) and (Path(root).is_absolute() or root.startswith("..")):
            return [f"--root {root} is a path of one machine; use COVIDCT_DATA_ROOT or a path under the working folder"]
        return []

    def _remember(self, args) -> None:
        """Run folders and files this command makes, for the commands after it."""
        from covidct.config import load_config

        if args.command == "demo":
            self.runs.add(_norm(Path(args.output_root) / "demo"))
        elif args.command == "train" and not self._is_placeholder(args.config):
            if args.run_dir:
                self.runs.add(_norm(args.run_dir))
            elif _norm(args.config) not in self.files:
                cfg = load_config(args.config, args.set)
                self.runs.add(_norm(Path(cfg.output_root) / cfg.run_name))
        elif args.command == "grid" and not self._is_placeholder(args.grid):
            from covidct.train.grid import load_grid

            self.runs.update(_norm(Path(cfg.output_root) / cfg.run_name) for cfg in load_grid(args.grid, args.set))
        elif args.command == "segment" and args.segment_action == "train":
            self.runs.add(_norm(args.run_dir or f"runs/segment-{args.model}-{args.dataset}-{args.size}"))
        elif args.command == "config" and args.config_action == "copy":
            dest = Path(args.dest) if args.dest else Path(Path(args.name).name).with_suffix(".yaml")
            if args.dest and (args.dest.endswith("/") or (REPO / args.dest).is_dir()):
                dest = dest / f"{Path(args.name).name.removesuffix('.yaml')}.yaml"
            self.files.add(_norm(dest))


def cheap(command: Command) -> bool:
    argv = command.argv
    if command.inline or command.placeholders or not argv:
        return False
    return argv[0] in RUN_CHEAP or argv[:2] in (["config", "list"], ["config", "show"]) or "--help" in argv


# -- the extractor and the checker themselves ---------------------------------------------------------------

SAMPLE = """
Intro `covidct audit my-ct --strict` and `covidct segment train --weights`, `covidct nothing` and `covidct audit --nope`.

```bash
covidct train --config configs/demo.yaml --evaluate   # the demo's run: it's runs/demo
covidct evaluate --run runs/demo \\
    --tta                                                # continued
covidct evaluate --run runs/never-made
covidct evaluate --run runs/X --dataset covid-ct-md --root ../shared/data/covid-ct-md-sample \\
    --label-map "COVID-19=COV,CAP=NonCOV,Normal=NonCOV"
covidct evaluate --run runs/X --dataset covid-ct-md --label-map "COV=COV,OtherPneumonia=NonCOV,Normal=NonCOV"
covidct train --config ... --resume
covidct train --config configs/nope.yaml
covidct train --config configs/demo.yaml --set training.epochz=3
covidct config copy sars-cov-2-ct/base mine.yaml
covidct train --config mine.yaml
covidct models --famly x
make demo
```
"""


def test_the_extractor_joins_continuations_drops_comments_and_keeps_document_order():
    commands = extract_commands("sample.md", SAMPLE)
    assert [c.inline for c in commands] == [True] * 4 + [False] * 11
    assert commands[0].argv == ["audit", "my-ct", "--strict"]
    assert commands[4].argv == ["train", "--config", "configs/demo.yaml", "--evaluate"]
    assert commands[5].argv == ["evaluate", "--run", "runs/demo", "--tta"]
    assert commands[5].where == "sample.md:6"
    assert commands[7].argv[-2:] == ["--label-map", "COVID-19=COV,CAP=NonCOV,Normal=NonCOV"]
    assert [c.placeholders for c in commands[7:10]] == [["runs/X"], ["runs/X"], ["..."]]
    assert strip_comment('covidct x --label-map "a#b"  # note') == 'covidct x --label-map "a#b"'


def test_the_checker_finds_each_kind_of_broken_command():
    checker = DocumentChecker()
    problems = [checker.check(c) for c in extract_commands("sample.md", SAMPLE)]
    assert problems[0] == [] and problems[1] == []  # real subcommand, real options
    assert problems[2] == ["sample.md:2: `covidct nothing`: 'nothing' is not a covidct subcommand"]
    assert problems[3] == ["sample.md:2: `covidct audit --nope`: covidct audit has no option --nope"]
    assert problems[4] == [] and problems[5] == []  # runs/demo is made by the train command above it
    assert problems[6] == ["sample.md:8: `covidct evaluate --run runs/never-made`: --run runs/never-made is not "
                           "made by an earlier command of this document (nor a placeholder)"]
    assert len(problems[7]) == 2
    assert "keys ['CAP', 'COVID-19', 'Normal'] are not the labels 'covid-ct-md' loads as ['COV', 'Normal', " \
           "'OtherPneumonia']" in problems[7][0]
    assert "--root ../shared/data/covid-ct-md-sample is a path of one machine" in problems[7][1]
    assert problems[8] == [] and problems[9] == []  # the right labels; a placeholder config
    assert "configs/nope.yaml does not exist and is not a shipped config" in problems[10][0]
    assert "training.epochz" in problems[11][0]
    assert problems[12] == [] and problems[13] == []  # mine.yaml is written by the config copy above it
    assert "unrecognized arguments: --famly x" in problems[14][0]
    assert checker.placeholders == 3


# -- the documents ------------------------------------------------------------------------------------------


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # documented commands run from the repository root


@pytest.mark.parametrize("document", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_documented_commands_parse_and_name_what_exists(document, in_repo):
    checker = DocumentChecker()
    name = str(document.relative_to(REPO))
    problems = [p for command in extract_commands(name, document_text(document)) for p in checker.check(command)]
    assert not problems, "\n".join(problems)


def test_the_documents_hold_the_commands_they_are_known_for():
    commands = {name: extract_commands(name, document_text(REPO / name)) for name in ("README.md", "data/README.md")}
    full = [c for c in commands["README.md"] if not c.inline]
    topic_pages = [c for page in sorted((REPO / "docs").glob("*.md"))
                   for c in extract_commands(str(page.relative_to(REPO)), document_text(page)) if not c.inline]
    assert len(full) >= 12 and len(full) + len(topic_pages) >= 30
    assert ["config", "list"] in [c.argv for c in full]
    assert any(c.argv[:1] == ["evaluate"] and "--label-map" in c.argv for c in full)
    assert sum(not c.inline for c in commands["data/README.md"]) >= 5
    data_readme = (REPO / "data" / "README.md").read_text()
    for way in ("COVIDCT_DATA_ROOT", "covidct data", "drive.mount", "kaggle datasets download -d "
                "plameneduardo/sarscov2-ctscan-dataset", "covidct download"):
        assert way in data_readme, way
    assert "shared/data" not in data_readme  # no folder of one development machine
    placeholders = sum(bool(c.placeholders) for c in full)
    assert placeholders <= 6, [c.text for c in full if c.placeholders]  # placeholders stay the exception


def test_cheap_documented_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COVIDCT_DATA_ROOT", str(tmp_path / "datasets"))
    ran = []
    for document in documents():
        for command in extract_commands(document.name, document_text(document)):
            if not cheap(command):
                continue
            try:
                code = main(command.argv)
            except SystemExit as stop:  # --help
                code = stop.code
            out = capsys.readouterr().out
            assert code == 0, f"{command.where}: `{command.text}` exited {code}"
            assert out.strip(), f"{command.where}: `{command.text}` printed nothing"
            if command.argv == ["models"]:
                assert "model(s)." in out and "small_cnn" in out
            if command.argv == ["data"]:
                assert "Data root:" in out and "sars-cov-2-ct" in out
            ran.append(" ".join(command.argv))
    assert {"data", "config list", "models"} <= set(ran), ran


@pytest.mark.realdata
def test_the_readme_external_label_map_maps_every_real_covid_ct_md_slice(data_root):
    from covidct.data.datasets import dataset_candidates, load_dataset
    from covidct.train.data import apply_label_map, parse_label_map

    root = next((c for c in dataset_candidates("covid-ct-md", data_root) if c.is_dir()), None)
    if root is None:
        pytest.skip(f"covid-ct-md not found under {data_root}")
    command = next(c for c in extract_commands("README.md", document_text(REPO / "README.md"))
                   if not c.inline and c.argv[:1] == ["evaluate"] and "--label-map" in c.argv)
    manifest = load_dataset("covid-ct-md", root=root)
    mapped = apply_label_map(manifest, parse_label_map(command.argv[command.argv.index("--label-map") + 1]))
    assert len(mapped) == len(manifest)
    assert mapped["label"].value_counts().to_dict() == {
        "NonCOV": int((manifest["label"] != "COV").sum()), "COV": int((manifest["label"] == "COV").sum())}
    with pytest.raises(CovidctError, match=r"label\(s\) \['COV', 'OtherPneumonia'\] are not in the label map"):
        apply_label_map(manifest, parse_label_map("COVID-19=COV,CAP=NonCOV,Normal=NonCOV"))  # the old README's map
