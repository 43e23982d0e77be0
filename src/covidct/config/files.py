"""Config files: the shipped configs, finding one by name or path, reading, writing and copying YAML."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import yaml

from covidct.config.schema import RunConfig, config_to_dict
from covidct.data.writes import atomic_write_text
from covidct.errors import CovidctError, did_you_mean


def shipped_configs_folder() -> Path:
    """The folder of the YAML configs shipped inside the package (``covidct/configs``)."""
    return Path(str(resources.files("covidct") / "configs"))


def list_configs() -> list[str]:
    """Names of the shipped configs, e.g. ``demo``, ``sars-cov-2-ct/base``, ``grids/ct-cov19``."""
    folder = shipped_configs_folder()
    return sorted(path.relative_to(folder).with_suffix("").as_posix() for path in folder.rglob("*.yaml"))


def config_path(name_or_path: str | os.PathLike) -> Path:
    """Resolve a config given as a file path or as the name of a shipped config.

    An existing file wins; otherwise ``name_or_path`` is looked up among the shipped configs, with or
    without ``.yaml`` and a leading ``configs/`` (so ``configs/demo.yaml`` works after a pip install too).

    Raises:
        CovidctError: neither a file nor a shipped config (close names suggested), or a directory.
    """
    path = Path(name_or_path)
    if path.is_dir():
        raise CovidctError(f"{path} is a folder, not a config file; pass a YAML file or a shipped config name.")
    if path.is_file():
        return path
    name = path.as_posix()
    name = name[len("configs/"):] if name.startswith("configs/") else name
    name = name[: -len(".yaml")] if name.endswith(".yaml") else name
    shipped = shipped_configs_folder() / f"{name}.yaml"
    if name in list_configs():
        return shipped
    raise CovidctError(
        f"Config file {path} does not exist and is not a shipped config.{did_you_mean(name, list_configs())} "
        "List the shipped ones with `covidct config list`."
    )


def read_config_file(file: Path) -> dict:
    """The mapping of a config file; an empty, non-text, non-YAML or non-mapping file is refused by name."""
    try:
        text = file.read_text()
    except UnicodeDecodeError:
        raise CovidctError(f"{file}: not a text file, so not a YAML config; pass a .yaml config file.") from None
    except OSError as error:
        raise CovidctError(f"{file}: cannot read the config ({error.strerror or error}).") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CovidctError(f"{file}: not valid YAML ({error}).") from error
    if tree is None:
        raise CovidctError(
            f"{file}: the config file is empty (no keys). An empty file would train on every default and write "
            "data/ and .cache/ into the working folder; write the keys you mean (e.g. data: {dataset: ...}, "
            "model: {name: ...}), start from a shipped config such as configs/demo.yaml, or pass no config at all "
            "where defaults are wanted (load_config() without a path)."
        )
    if not isinstance(tree, dict):
        kind = "a list" if isinstance(tree, list) else f"a single {type(tree).__name__} value ({str(tree)[:40]!r})"
        raise CovidctError(
            f"{file}: the top level must be a mapping of sections (name:, data:, model:, training:, evaluation:, ...), "
            f"got {kind}. Write it as key: value lines, e.g. `model: {{name: small_cnn}}`, not as a list."
        )
    return tree


def dump_config(cfg: RunConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML atomically (temporary file, then rename)."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def copy_config(name: str, dest: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Copy a shipped config (or a config file) to a file or folder, to edit it there.

    Args:
        name: a shipped config name such as ``"sars-cov-2-ct/base"`` (see :func:`list_configs`), or a YAML file.
        dest: the target file, or an existing folder (or one given with a trailing ``/``) that receives
            ``<name's file name>.yaml``; default: that file name in the working folder.
        force: replace a file that already exists at the target.

    Returns:
        The path written.

    Raises:
        CovidctError: unknown config (close names suggested), or the target exists and ``force`` is False.
    """
    source = config_path(name)
    target = Path(dest) if dest is not None else Path(source.name)
    if target.is_dir() or (dest is not None and str(dest).endswith(("/", os.sep))):
        target = target / source.name
    if target.exists() and not force:
        raise CovidctError(f"{target} already exists; pass --force (force=True) to replace it, or choose another DEST.")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target
