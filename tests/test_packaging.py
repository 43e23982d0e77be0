"""The built wheel is all a user needs: it installs warning-free, carries the configs, and runs notebook 00.

The wheel is built from a copy of the project files, installed (without dependencies, offline) into a fresh
virtual environment outside the repository whose only view of the development environment is one ``.pth`` line
naming its site-packages, for the dependencies (a plain path line in a ``.pth`` file does not process the
``.pth`` files inside that folder, so the editable install of this repository stays invisible). Then, from a
folder with no ``configs/`` beside it, the console script lists the shipped configs, a config loads by name and
notebook 00 executes in smoke mode on a kernel running that environment's Python.

Also here: the one source of truth for the install location (``project.urls.Source`` in pyproject.toml), which
every notebook's install cell and the README's Colab instructions use.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SOURCE = PYPROJECT["project"]["urls"]["Source"]
NOTEBOOK_00 = REPO / "notebooks" / "00_quickstart.ipynb"
URL = re.compile(r"https?://[^\s'\"\)\]>]+")


# -- one source of truth for the install location ---------------------------------------------------------


def _install_cell(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    installs = ["".join(c["source"]) for c in cells if c["cell_type"] == "code" and "pip install" in "".join(c["source"])]
    assert len(installs) == 1, f"{path.relative_to(REPO)}: expected one install cell, found {len(installs)}"
    return installs[0]


def _normalise(url: str) -> str:
    url = url.removeprefix("git+")
    return url.removesuffix(".git")


def test_source_url_is_a_plain_https_repository_url():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", SOURCE), SOURCE


@pytest.mark.parametrize("notebook", sorted(REPO.glob("notebooks/**/*.ipynb")), ids=lambda p: p.name)
def test_every_install_cell_installs_from_project_urls_source(notebook):
    cell = _install_cell(notebook)
    urls = URL.findall(cell)
    assert f"git+{SOURCE}.git" in cell, f"{notebook.name}: the install cell does not install git+{SOURCE}.git"
    assert [_normalise(u) for u in urls] == [SOURCE], f"{notebook.name}: install cell URLs {urls}, want only {SOURCE}"


def test_readme_and_requirements_colab_instructions_agree_with_the_source_url():
    readme = (REPO / "README.md").read_text()
    colab = readme[readme.index("**On Colab**"):]
    colab = colab[: colab.index("\n## ")]
    assert f"git+{SOURCE}.git" in colab
    assert {_normalise(u) for u in URL.findall(colab) if "github.com" in u} == {SOURCE}
    for way in ("make wheel", "covidct-", ".whl", "git clone", "pip install -q ./covidct"):
        assert way in colab, f"README's Colab paragraph does not mention {way!r}"
    assert re.search(r"^wheel:", (REPO / "Makefile").read_text(), re.M)
    assert f"covidct-{PYPROJECT['project']['version']}-py3-none-any.whl" in colab  # the file `make wheel` writes
    comment = "\n".join(line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("#"))
    assert "Colab" in comment and "README" in comment
    assert "pip install -e ." not in comment  # an editable install of a folder that is not there on Colab
    assert {_normalise(u) for u in URL.findall(comment)} <= {SOURCE}


# -- the wheel in a fresh environment ---------------------------------------------------------------------


def _run(command: list, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _clean_env(**extra) -> dict:
    """The environment of the test process without anything that would point Python at this repository."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
                                                            "PYTHONDONTWRITEBYTECODE")}
    env.update(extra)
    return env


def build_wheel(out: Path) -> tuple[Path, str]:
    """Build the wheel from a copy of the project files (the repository's own build/ stays untouched).

    Returns:
        The wheel and the build's verbose output.
    """
    project = out / "project"
    project.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, project / name)
    shutil.copytree(REPO / "src" / "covidct", project / "src" / "covidct",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = out / "dist"
    result = _run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index",
                   "-w", dist, project], cwd=out, env=_clean_env())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    wheels = sorted(dist.glob("covidct-*.whl"))
    assert len(wheels) == 1, output[-3000:]
    return wheels[0], output


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """A fresh venv (outside the repository) with the dev environment's packages as dependencies only."""
    base = tmp_path_factory.mktemp("packaging")
    assert not base.resolve().is_relative_to(REPO)
    started = time.perf_counter()
    wheel, build_output = build_wheel(base / "build")
    built = time.perf_counter()
    venv = base / "venv"
    interpreter = getattr(sys, "_base_executable", sys.executable)
    result = _run([interpreter, "-m", "venv", "--without-pip", venv], cwd=base, env=_clean_env())
    assert result.returncode == 0, result.stderr
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=base, env=_clean_env()).stdout.strip())
    (site / "covidct_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = base / "work"  # no configs/, no src/ beside it
    work.mkdir()
    before = _run([python, "-c", "import numpy, nbformat, ipykernel; import covidct"], cwd=work, env=_clean_env())
    result = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel],
                  cwd=base, env=_clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return {"venv": venv, "python": python, "work": work, "wheel": wheel, "build_output": build_output,
            "before": before, "seconds": {"build": built - started, "install": time.perf_counter() - built}}


@pytest.mark.slow
def test_wheel_builds_without_warnings_and_carries_configs_and_licence(wheel_env):
    import zipfile

    output = wheel_env["build_output"]
    assert "Created wheel for covidct" in output
    for text in ("SetuptoolsDeprecationWarning", "BuildBackendWarning", "Warning", "warning:", "deprecated"):
        assert text not in output, [line for line in output.splitlines() if text in line]
    from covidct.config import list_configs

    with zipfile.ZipFile(wheel_env["wheel"]) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {f"covidct/configs/{name}.yaml" for name in list_configs()} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    assert f"Project-URL: Source, {SOURCE}" in metadata
    assert not any(n.startswith(("tests/", "notebooks/", "benchmarks/")) for n in names)


@pytest.mark.slow
def test_the_fresh_environment_cannot_see_the_repository_before_the_wheel(wheel_env):
    before = wheel_env["before"]
    assert before.returncode == 1
    assert before.stderr.strip().splitlines()[-1] == "ModuleNotFoundError: No module named 'covidct'"  # numpy, nbformat, ipykernel imported


@pytest.mark.slow
def test_installed_wheel_lists_and_finds_configs_outside_the_repository(wheel_env):
    from covidct.config import list_configs

    work, venv = wheel_env["work"], wheel_env["venv"]
    assert not (work / "configs").exists()
    listed = _run([venv / "bin" / "covidct", "config", "list"], cwd=work, env=_clean_env())
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == list_configs()
    code = "import covidct, covidct.config as c; print(covidct.__file__); print(c.config_path('sars-cov-2-ct/base'))"
    found = _run([wheel_env["python"], "-c", code], cwd=work, env=_clean_env())
    assert found.returncode == 0, found.stderr[-3000:]
    module, config = (Path(line).resolve() for line in found.stdout.strip().splitlines()[-2:])
    assert module.is_relative_to(venv.resolve()) and config.is_relative_to(venv.resolve())
    assert config.read_bytes() == (REPO / "src" / "covidct" / "configs" / "sars-cov-2-ct" / "base.yaml").read_bytes()


@pytest.mark.slow
def test_notebook_00_runs_in_smoke_mode_on_the_installed_wheel(wheel_env, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    kernels = tmp_path / "jupyter" / "kernels" / "covidct-wheel"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(wheel_env["python"]), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "covidct wheel", "language": "python",
    }))
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MPLBACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("COVIDCT_SMOKE", "1")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    notebook = nbformat.read(NOTEBOOK_00, as_version=4)  # the repository's notebook as it is now
    notebook.cells.append(nbformat.v4.new_code_cell(  # checked in the kernel that ran it (TensorFlow loaded once)
        "import resource, sys, covidct, covidct.config\nprint(sys.executable)\nprint(covidct.__file__)\n"
        "usage = resource.getrusage(resource.RUSAGE_SELF)\nprint(usage.ru_utime + usage.ru_stime)\n"
        "cfg = covidct.config.load_config('demo')\nprint(cfg.model.name, cfg.data.dataset, cfg.data.stage)"))
    work = wheel_env["work"]
    started = time.perf_counter()
    NotebookClient(notebook, kernel_name="covidct-wheel", timeout=600,
                   resources={"metadata": {"path": str(work)}}).execute()
    seconds = time.perf_counter() - started
    printed = "".join(o.get("text", "") for o in notebook.cells[-1].outputs if o.get("name") == "stdout").split()
    assert Path(printed[0]).parent == wheel_env["venv"] / "bin"
    assert Path(printed[1]).resolve().is_relative_to(wheel_env["venv"].resolve())
    assert printed[3:] == ["small_cnn", "phantom", "lungs"]  # load_config("demo") by name, from the wheel
    assert not (work / "configs").exists()
    print(f"notebook 00 on the wheel: {seconds:.0f} s wall, {float(printed[2]):.0f} s kernel CPU; build {wheel_env['seconds']['build']:.0f} s, "
          f"install {wheel_env['seconds']['install']:.0f} s")
