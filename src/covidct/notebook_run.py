"""Execute the notebooks and keep copies WITH outputs in ``docs/notebooks/`` (``make notebooks-executed``).

The notebooks under ``notebooks/`` are committed without outputs, so GitHub shows only their code. This
module runs each one top to bottom with nbclient (the IPython kernel and matplotlib's inline backend, so
every displayed figure becomes an ``image/png`` output), with ``notebooks/`` as the working directory, and
writes the executed copy to ``docs/notebooks/<same relative name>``. By default it runs in **full mode**
(``COVIDCT_SMOKE`` removed from the kernel's environment) on the datasets under ``$COVIDCT_DATA_ROOT``.

Each copy records, under ``metadata["covidct"]``, the commit it was made at and the SHA-256 of its source
notebook as committed (outputs stripped, ``source_sha256``). ``check_executed`` (and
``tests/test_executed_notebooks.py``) compare that hash with the source notebook, so a notebook that changed
without its copy being refreshed is caught. Size caps keep the repository light and GitHub's renderer
working: at most ``NOTEBOOK_CAP_BYTES`` per copy and ``TOTAL_CAP_BYTES`` for all of them. A copy over its
cap has its PNG figures re-encoded (256-colour palette, then smaller); one still over it is refused with an
error. Terminal progress bars (carriage-return redraws) are collapsed to their last state, long text
outputs are shortened, and absolute paths of the data root, the checkout and the Python environment are
replaced by ``$COVIDCT_DATA_ROOT``, ``<repo>`` and ``<python>``. Each copy also records the datasets it
said it used (``datasets_used``), which ``docs/notebooks/NOTICE.md`` must list with their licences.

    python -m covidct.notebook_run                       # every notebook, full mode, into docs/notebooks/
    python -m covidct.notebook_run --only 08_confusion_matrices --param RUN=../runs/my-run
    python -m covidct.notebook_run --smoke --only 00_quickstart    # try it: smoke mode, into runs/notebooks-smoke/
    python -m covidct.notebook_run --check               # verify the committed copies (no execution)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import yaml

from covidct.errors import CovidctError, did_you_mean

logger = logging.getLogger(__name__)

NOTEBOOK_CAP_BYTES = 3_000_000
TOTAL_CAP_BYTES = 30_000_000
METADATA_KEY = "covidct"
#: Longest text kept of one stream or text/plain output; the middle of a longer one is cut out.
TEXT_CAP_CHARS = 20_000
#: Image scales tried, in order, when a copy is over its cap (each also re-encoded with a 256-colour palette).
SHRINK_SCALES = (1.0, 0.75, 0.55, 0.4, 0.3)
#: Smallest side, in pixels, an image is ever shrunk to.
MIN_IMAGE_SIDE = 64
DEFAULT_OUT = Path("docs/notebooks")
SMOKE_OUT = Path("runs/notebooks-smoke")


@dataclass
class Executed:
    """What one execution produced: the copy, its size, the recorded metadata and the image scale used."""

    source: Path
    copy: Path
    size_bytes: int
    seconds: float
    record: dict = field(default_factory=dict)
    image_scale: float = 1.0


def find_repo_root(start: str | os.PathLike | None = None) -> Path:
    """The checkout that holds ``notebooks/`` (searched upwards from ``start``, default the working folder)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    raise CovidctError(f"No covidct checkout (a folder with notebooks/ and pyproject.toml) above {here}; "
                       "run from the repository or pass --repo.")


def source_notebooks(notebooks_dir: str | os.PathLike) -> list[Path]:
    """``notebooks/*.ipynb`` then ``notebooks/templates/*.ipynb``, sorted by name."""
    folder = Path(notebooks_dir)
    return sorted(folder.glob("*.ipynb")) + sorted((folder / "templates").glob("*.ipynb"))


def executed_copy_path(source: Path, notebooks_dir: Path, out_dir: Path) -> Path:
    """Where the executed copy of ``source`` goes: the same path relative to ``notebooks_dir``, under ``out_dir``."""
    return Path(out_dir) / Path(source).resolve().relative_to(Path(notebooks_dir).resolve())


def source_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a notebook as committed: code outputs and execution counts removed, JSON keys sorted.

    The raw JSON is hashed (not an nbformat round trip), so the value does not depend on the nbformat
    version; a notebook saved with or without outputs hashes the same.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CovidctError(f"{path} is not a readable notebook ({error}).") from None
    for cell in content.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_state(repo: Path, path: Path) -> tuple[str, bool]:
    """(HEAD commit or ``"unknown"``, whether ``path`` differs from that commit)."""
    commit = _git(repo, "rev-parse", "HEAD") or "unknown"
    status = _git(repo, "status", "--porcelain", "--", str(path))
    return commit, bool(status)


def kernel_environment(smoke: bool, base: dict | None = None) -> dict:
    """The kernel's environment: ``COVIDCT_SMOKE=1`` in smoke mode and unset in full mode; ``MPLBACKEND``
    removed so the kernel uses matplotlib's inline backend (the Makefile exports ``MPLBACKEND=Agg``)."""
    env = dict(os.environ if base is None else base)
    env.pop("MPLBACKEND", None)
    env.pop("COVIDCT_SMOKE", None)
    if smoke:
        env["COVIDCT_SMOKE"] = "1"
    return env


def parse_parameters(items, names: list[str]) -> dict[str, dict[str, str]]:
    """``[NOTEBOOK:]KEY=VALUE`` strings → {notebook name or ``"*"``: {KEY: VALUE}} (values stay strings)."""
    parsed: dict[str, dict[str, str]] = {}
    for item in items or []:
        head, equals, value = item.partition("=")
        target, _, key = head.rpartition(":")
        if not equals or not key.isidentifier():
            raise CovidctError(f"--param {item!r}: write [NOTEBOOK:]NAME=VALUE, e.g. RUN=../runs/my-run.")
        target = Path(target).stem if target else "*"
        if target != "*" and target not in names:
            raise CovidctError(f"--param {item!r}: no notebook {target!r}.{did_you_mean(target, names)}")
        parsed.setdefault(target, {})[key] = value
    return parsed


def parameter_value(text: str):
    """A ``--param`` value as papermill's ``-p`` reads it: a YAML number, boolean or list, else the string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, list)) else text


def inject_parameters(notebook, values: dict[str, str]) -> list[str]:
    """Add a cell tagged ``injected-parameters`` after the ``parameters`` cell (papermill's convention).

    Only names the parameters cell assigns are injected; the others are returned unused.
    """
    if not values:
        return []
    cells = notebook.cells
    index = next((i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if index is None:
        return sorted(values)
    assigned = set(re.findall(r"^([A-Za-z_]\w*)\s*=", cells[index].source, flags=re.MULTILINE))
    used = {key: value for key, value in values.items() if key in assigned}
    if used:
        cell = nbformat.v4.new_code_cell("\n".join(f"{key} = {parameter_value(value)!r}"
                                                   for key, value in sorted(used.items())))
        cell.metadata["tags"] = ["injected-parameters"]
        cells.insert(index + 1, cell)
    return sorted(set(values) - set(used))


def _collapse_carriage_returns(text: str) -> str:
    """What a terminal would show: each line keeps the part after its last carriage return."""
    if "\r" not in text:
        return text
    lines = text.split("\n")
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines)


def _cap_text(text: str, limit: int = TEXT_CAP_CHARS) -> str:
    if len(text) <= limit:
        return text
    head, tail = text[: limit // 2], text[-limit // 2:]
    return f"{head}\n[... {len(text) - len(head) - len(tail):,} characters left out of the executed copy ...]\n{tail}"


def clean_outputs(notebook, replacements: dict[str, str] | None = None) -> None:
    """Collapse progress-bar redraws, shorten long texts, drop widget views, replace local paths (in place)."""
    replacements = {k: v for k, v in (replacements or {}).items() if k}
    order = sorted(replacements, key=len, reverse=True)

    def fix(text: str) -> str:
        for old in order:
            text = text.replace(old, replacements[old])
        return text

    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                output["text"] = _cap_text(fix(_collapse_carriage_returns("".join(output.get("text", "")))))
            data = output.get("data")
            if data:
                data.pop("application/vnd.jupyter.widget-view+json", None)
                for key in ("text/plain", "text/html", "text/markdown"):
                    if key in data:
                        data[key] = _cap_text(fix("".join(data[key])))
            if output.get("output_type") == "error":
                output["traceback"] = [fix(line) for line in output.get("traceback", [])]
    notebook.metadata.pop("widgets", None)


def local_paths(repo_root: Path) -> dict[str, str]:
    """Absolute local paths to hide in outputs: the data root, the checkout and the Python environment."""
    paths = {str(Path(repo_root).resolve()): "<repo>", sys.prefix: "<python>"}
    data_root = os.environ.get("COVIDCT_DATA_ROOT", "")
    if data_root:
        paths[str(Path(data_root).resolve())] = "$COVIDCT_DATA_ROOT"
        if os.path.isabs(data_root):
            paths[data_root.rstrip("/")] = "$COVIDCT_DATA_ROOT"
    return {path: text for path, text in paths.items() if len(path) > 1}


def datasets_used(notebook) -> list[str]:
    """The datasets a notebook said it used, from the lines ``covidct.data.datasets.choose_data`` prints.

    ``"Data: real dataset 'NAME' from ..."`` gives NAME; ``"Data: synthetic phantoms ..."`` gives ``phantom``.
    """
    found = set()
    for cell in notebook.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            text = "".join(output.get("text", "")) + "".join((output.get("data") or {}).get("text/plain", ""))
            found.update(re.findall(r"Data: real dataset '([^']+)'", text))
            if "Data: synthetic phantoms" in text:
                found.add("phantom")
    return sorted(found)


def notice_problems(out_dir: str | os.PathLike, notice: str | os.PathLike | None = None) -> list[str]:
    """Executed copies that used a real dataset the notice (``<out_dir>/NOTICE.md``) does not list for them.

    Each copy records ``datasets_used``; every real dataset in it must be named on the notice's table row of
    that notebook (a line starting with ``| <name relative to out_dir>``), where its licence is stated.
    """
    out_dir = Path(out_dir)
    notice = Path(notice) if notice else out_dir / "NOTICE.md"
    rows = notice.read_text(encoding="utf-8").splitlines() if notice.is_file() else []
    problems = []
    for copy_path in sorted(out_dir.rglob("*.ipynb")) if out_dir.is_dir() else []:
        relative = copy_path.relative_to(out_dir).as_posix()
        record = nbformat.read(copy_path, as_version=4).metadata.get(METADATA_KEY) or {}
        line = next((row for row in rows if row.replace("`", "").startswith(f"| {relative} ")), "")
        for dataset in record.get("datasets_used", []):
            if dataset != "phantom" and f"`{dataset}`" not in line:
                problems.append(f"{relative}: used the real dataset {dataset!r} but {notice} does not name it on "
                                f"the notebook's row; add what it shows and under which licence")
    return problems


def notebook_bytes(notebook) -> int:
    """Size in bytes of the notebook as it would be written."""
    return len(nbformat.writes(notebook).encode("utf-8"))


def _png_outputs(notebook) -> list[dict]:
    return [output["data"] for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.get("outputs", []) if "image/png" in (output.get("data") or {})]


def _encode_png(original: bytes, scale: float) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(original)) as image:
        image.load()
        width, height = image.size
        if scale < 1.0:
            factor = max(scale, MIN_IMAGE_SIDE / max(min(width, height), 1))
            if factor < 1.0:
                image = image.resize((max(1, round(width * factor)), max(1, round(height * factor))),
                                     Image.Resampling.LANCZOS)
        image = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    encoded = buffer.getvalue()
    return encoded if len(encoded) < len(original) or scale < 1.0 else original


def shrink_images(notebook, cap_bytes: int = NOTEBOOK_CAP_BYTES, name: str = "notebook") -> float:
    """Re-encode the PNG outputs until the notebook fits ``cap_bytes``; return the scale used (1.0: untouched).

    Tries each of ``SHRINK_SCALES`` on every PNG (always from the original pixels, re-encoded with a 256-colour
    palette, no side below ``MIN_IMAGE_SIDE``) and keeps the first that fits.

    Raises:
        CovidctError: the notebook is still over the cap at the smallest scale (too much text, or too many
            figures): the message names it and the fix.
    """
    size = notebook_bytes(notebook)
    if size <= cap_bytes:
        return 1.0
    images = _png_outputs(notebook)
    originals = [base64.b64decode("".join(data["image/png"])) for data in images]
    for scale in SHRINK_SCALES:
        for data, original in zip(images, originals):
            data["image/png"] = base64.b64encode(_encode_png(original, scale)).decode("ascii")
        size = notebook_bytes(notebook)
        if size <= cap_bytes:
            logger.info("%s: %d PNG output(s) re-encoded at scale %.2f to fit %d bytes", name, len(images), scale,
                        cap_bytes)
            return scale
    raise CovidctError(
        f"{name}: {size:,} bytes with its {len(images)} figure(s) shrunk to {SHRINK_SCALES[-1]:.0%}, over the "
        f"{cap_bytes:,}-byte cap of an executed notebook. Show fewer or smaller figures (or less text) in it."
    )


def total_bytes(out_dir: Path, leave_out: Path | None = None) -> int:
    """Bytes of every ``*.ipynb`` under ``out_dir`` (``leave_out`` not counted)."""
    skip = leave_out.resolve() if leave_out is not None else None
    return sum(p.stat().st_size for p in Path(out_dir).rglob("*.ipynb") if p.resolve() != skip)


def execute_notebook(
    source: str | os.PathLike, out_dir: str | os.PathLike, *, notebooks_dir: str | os.PathLike | None = None,
    smoke: bool = False, timeout: int | None = None, parameters: dict[str, str] | None = None,
    repo: str | os.PathLike | None = None, cap_bytes: int = NOTEBOOK_CAP_BYTES, total_cap_bytes: int = TOTAL_CAP_BYTES,
    kernel_name: str = "python3",
) -> Executed:
    """Execute one notebook (working folder ``notebooks_dir``) and write its copy with outputs under ``out_dir``.

    Args:
        source: the notebook.
        out_dir: the folder of executed copies (the copy keeps its path relative to ``notebooks_dir``).
        notebooks_dir: the notebooks folder, also the kernel's working folder (default: the source's folder).
        smoke: run with ``COVIDCT_SMOKE=1`` (default: full mode, the variable unset).
        timeout: seconds allowed per cell (None: no limit).
        parameters: NAME → value text injected after the parameters cell (names it does not assign are ignored).
        repo: the git checkout whose commit is recorded (default: the one above ``notebooks_dir``).
        cap_bytes, total_cap_bytes: the size caps of one copy and of all copies under ``out_dir``.
        kernel_name: the Jupyter kernel.

    Returns:
        An ``Executed`` record.

    Raises:
        CovidctError: a cell failed (the message names the notebook and the cell), or a cap is exceeded;
            nothing is written then.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    source = Path(source).resolve()
    notebooks_dir = Path(notebooks_dir or source.parent).resolve()
    out_dir = Path(out_dir)
    repo_root = Path(repo).resolve() if repo else notebooks_dir.parent
    target = executed_copy_path(source, notebooks_dir, out_dir)
    name = source.relative_to(notebooks_dir).as_posix()
    digest = source_sha256(source)
    notebook = nbformat.read(source, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    unused = inject_parameters(notebook, dict(parameters or {}))
    if unused:
        logger.info("%s: parameters %s not assigned in its parameters cell; not injected", name, unused)
    client = NotebookClient(notebook, timeout=timeout, kernel_name=kernel_name, store_widget_state=False,
                            resources={"metadata": {"path": str(notebooks_dir)}})
    started = time.perf_counter()
    try:
        client.execute(env=kernel_environment(smoke), cwd=str(notebooks_dir))
    except CellExecutionError as error:
        raise CovidctError(f"{name} failed while executing ({'smoke' if smoke else 'full'} mode); no copy written. "
                           f"First lines of the error:\n{str(error)[:1500]}") from None
    seconds = time.perf_counter() - started
    clean_outputs(notebook, local_paths(repo_root))
    commit, changed = git_state(repo_root, source)
    record = {
        "executed_copy_of": source.relative_to(repo_root).as_posix() if source.is_relative_to(repo_root) else name,
        "source_sha256": digest,
        "commit": commit,
        "source_differs_from_commit": changed,
        "mode": "smoke" if smoke else "full",
        "executed_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(seconds, 1),
        "parameters": {k: v for k, v in sorted((parameters or {}).items()) if k not in unused},
        "datasets_used": datasets_used(notebook),
        "image_scale": 1.0,
    }
    notebook.metadata[METADATA_KEY] = dict(record)
    scale = shrink_images(notebook, cap_bytes, name)
    notebook.metadata[METADATA_KEY]["image_scale"] = record["image_scale"] = scale
    size = notebook_bytes(notebook)
    others = total_bytes(out_dir, leave_out=target) if out_dir.is_dir() else 0
    if others + size > total_cap_bytes:
        raise CovidctError(f"{name}: its copy ({size:,} bytes) would bring {out_dir} to {others + size:,} bytes, over "
                           f"the {total_cap_bytes:,}-byte cap for all executed notebooks; make figures smaller.")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(nbformat.writes(notebook), encoding="utf-8")
    temporary.replace(target)
    return Executed(source, target, size, seconds, record, scale)


def check_executed(
    notebooks_dir: str | os.PathLike, out_dir: str | os.PathLike, allow_missing=(),
    cap_bytes: int = NOTEBOOK_CAP_BYTES, total_cap_bytes: int = TOTAL_CAP_BYTES,
) -> list[str]:
    """Problems of the executed copies (empty list: all fresh and within the caps).

    A problem is: a source notebook without a copy (unless its relative name is in ``allow_missing``), a
    copy whose recorded ``source_sha256`` differs from its source now, a copy not made in full mode, a copy
    without a source, a copy over ``cap_bytes``, or all copies together over ``total_cap_bytes``.
    """
    notebooks_dir, out_dir = Path(notebooks_dir), Path(out_dir)
    problems = []
    sources = source_notebooks(notebooks_dir)
    expected = {executed_copy_path(s, notebooks_dir, out_dir).resolve(): s for s in sources}
    for source in sources:
        relative = source.resolve().relative_to(notebooks_dir.resolve()).as_posix()
        target = executed_copy_path(source, notebooks_dir, out_dir)
        if not target.is_file():
            if relative not in allow_missing:
                problems.append(f"{relative}: no executed copy at {target}; run `make notebooks-executed ONLY={relative}`")
            continue
        record = nbformat.read(target, as_version=4).metadata.get(METADATA_KEY) or {}
        if record.get("source_sha256") != source_sha256(source):
            problems.append(f"{relative}: changed since its executed copy {target} was made (commit "
                            f"{str(record.get('commit', 'unknown'))[:12]}); refresh it with "
                            f"`make notebooks-executed ONLY={relative}`")
        if record.get("mode") != "full":
            problems.append(f"{relative}: its copy {target} was executed in {record.get('mode')!r} mode, not 'full'")
        size = target.stat().st_size
        if size > cap_bytes:
            problems.append(f"{relative}: executed copy {target} is {size:,} bytes, over the {cap_bytes:,}-byte cap")
    if out_dir.is_dir():
        for copy_path in sorted(out_dir.rglob("*.ipynb")):
            if copy_path.resolve() not in expected:
                problems.append(f"{copy_path}: executed copy without a source notebook; delete it")
        total = total_bytes(out_dir)
        if total > total_cap_bytes:
            problems.append(f"{out_dir}: executed copies hold {total:,} bytes, over the {total_cap_bytes:,}-byte cap")
    return problems


def _select(sources: list[Path], notebooks_dir: Path, only) -> list[Path]:
    if not only:
        return sources
    names = {}
    for source in sources:
        relative = source.relative_to(notebooks_dir)
        for key in (relative.as_posix(), relative.with_suffix("").as_posix(), source.name, source.stem):
            names[key] = source
    chosen = []
    for item in only:
        for part in filter(None, re.split(r"[,\s]+", item)):
            if part not in names:
                raise CovidctError(f"--only {part!r}: no such notebook in {notebooks_dir}."
                                   f"{did_you_mean(part, sorted({s.stem for s in sources}))}")
            if names[part] not in chosen:
                chosen.append(names[part])
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m covidct.notebook_run", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="a notebook (e.g. 08_confusion_matrices or templates/new_model); repeatable")
    parser.add_argument("--smoke", action="store_true",
                        help=f"COVIDCT_SMOKE=1 (tiny and fast; default output {SMOKE_OUT})")
    parser.add_argument("--out", type=Path, default=None, help=f"folder of executed copies (default {DEFAULT_OUT})")
    parser.add_argument("--param", action="append", metavar="[NOTEBOOK:]NAME=VALUE",
                        help="a value for a name of the parameters cell, e.g. 08_confusion_matrices:RUN=../runs/x")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: no limit)")
    parser.add_argument("--repo", type=Path, default=None, help="the checkout (default: found from here)")
    parser.add_argument("--check", action="store_true", help="only verify the copies (hashes, mode, sizes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        repo = find_repo_root(args.repo)
        notebooks_dir = repo / "notebooks"
        out_dir = args.out if args.out is not None else (SMOKE_OUT if args.smoke else DEFAULT_OUT)
        out_dir = out_dir if out_dir.is_absolute() else repo / out_dir
        if args.check:
            problems = check_executed(notebooks_dir, out_dir) + notice_problems(out_dir)
            print("\n".join(problems) if problems else f"every executed copy in {out_dir} is fresh and within the caps")
            return 1 if problems else 0
        if args.smoke and out_dir.resolve() == (repo / DEFAULT_OUT).resolve():
            raise CovidctError(f"--smoke copies do not belong in {DEFAULT_OUT} (it holds full-mode copies); "
                               "leave --out out or name another folder.")
        sources = _select(source_notebooks(notebooks_dir), notebooks_dir, args.only)
        parameters = parse_parameters(args.param, [s.stem for s in source_notebooks(notebooks_dir)])
    except CovidctError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = []
    for source in sources:
        values = {**parameters.get("*", {}), **parameters.get(source.stem, {})}
        print(f"executing {source.relative_to(repo)} ({'smoke' if args.smoke else 'full'} mode) ...", flush=True)
        try:
            done = execute_notebook(source, out_dir, notebooks_dir=notebooks_dir, smoke=args.smoke,
                                    timeout=args.timeout, parameters=values, repo=repo)
        except CovidctError as error:
            print(f"error: {error}", file=sys.stderr)
            failed.append(source.name)
            continue
        print(f"  wrote {done.copy.relative_to(repo) if done.copy.is_relative_to(repo) else done.copy} "
              f"({done.size_bytes / 1e6:.2f} MB, {done.seconds:.0f} s, image scale {done.image_scale:g})")
    if failed:
        print(f"{len(failed)} of {len(sources)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
