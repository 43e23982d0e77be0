"""Every file a document cites exists in the repository: Markdown links, images and back-ticked repository paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)|src=\"([^\"]+)\"")
PATH = re.compile(r"`((?:benchmarks|src|tests|configs|docs|notebooks|images|data)/[\w./-]+"
                  r"\.(?:py|json|md|yaml|png|sh|ipynb|csv))`")
#: Paths that name a pattern or a file the reader creates, not a file of the repository.
EXAMPLES = re.compile(r"NN|<|tiny_mlp\.py$")


def documents() -> list[Path]:
    found = [REPO / name for name in ("README.md", "BENCHMARKS.md", "CONTRIBUTING.md", "data/README.md")]
    return found + sorted((REPO / "docs").rglob("*.md"))


def cited(document: Path) -> list[tuple[str, Path]]:
    text = document.read_text()
    links = [(m.group(1) or m.group(2), document.parent) for m in LINK.finditer(text)]
    paths = [(m.group(1), REPO) for m in PATH.finditer(text)]
    return [(target, base / target) for target, base in links + paths
            if not target.startswith(("http://", "https://", "mailto:")) and not EXAMPLES.search(target)]


def test_the_scan_finds_links_images_and_paths(tmp_path):
    page = tmp_path / "page.md"
    page.write_text('See [a](a.md#x), <img src="img/b.png"> and `benchmarks/bench_x.py`; [web](https://x.org).\n')
    assert [target for target, _ in cited(page)] == ["a.md", "img/b.png", "benchmarks/bench_x.py"]


@pytest.mark.parametrize("document", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_cited_file_exists(document):
    missing = [target for target, path in cited(document) if not path.exists()]
    assert not missing, f"{document.relative_to(REPO)} cites files that do not exist: {missing}"
