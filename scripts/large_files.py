"""large_files.yml, the model zoo's list of the bundle's weight files (path, URL, hash), kept in
step with models/.

    python -m scripts.large_files                # check: exit 1 if the file is not up to date
    python -m scripts.large_files --update true  # rewrite it from models/**/*.pt

The file lists every ``models/**/*.pt`` with its SHA-256, which ``python -m monai.bundle
download_large_files`` checks (a file already there with the right hash is not downloaded). The
weights are not hosted anywhere yet: each URL is a placeholder under the reserved ``.invalid``
domain, kept through updates, to be replaced by the real one when the files are published; until
then the files are in this repository for the offline demo.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import yaml

from bundle.io.atomic import write_text
from bundle.workflow.configs import BUNDLE_ROOT
from bundle.workflow.options import flag, run_cli

LARGE_FILES = BUNDLE_ROOT / "large_files.yml"
PLACEHOLDER = "https://unpublished.invalid/brats-diffusion/{path}"
HEADER = """\
# The bundle's weight files for the MONAI model zoo (python -m monai.bundle download_large_files):
# path, URL and SHA-256 of each. Written by `python -m scripts.large_files --update true`; the
# tests check it against models/. The weights are not hosted anywhere yet: the URLs under the
# reserved .invalid domain are placeholders until they are; the files are in this repository.
"""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def render(root: Path = BUNDLE_ROOT, urls: dict[str, str] | None = None) -> str:
    """large_files.yml for the weight files under ``root/models``; ``urls`` keeps the URL of a
    path already listed, new paths get the placeholder."""
    urls = urls or {}
    entries = []
    for path in sorted((root / "models").rglob("*.pt")):
        relative = path.relative_to(root).as_posix()
        entries.append(
            {
                "path": relative,
                "url": urls.get(relative, PLACEHOLDER.format(path=relative)),
                "hash_val": sha256(path),
                "hash_type": "sha256",
            }
        )
    return HEADER + yaml.safe_dump({"large_files": entries}, sort_keys=False)


def listed_urls(path: Path = LARGE_FILES) -> dict[str, str]:
    if not path.is_file():
        return {}
    entries = yaml.safe_load(path.read_text())["large_files"]
    return {entry["path"]: entry["url"] for entry in entries}


def large_files(update: bool | str = False) -> bool:
    """Check large_files.yml against models/ (or rewrite it); returns whether it is up to date."""
    expected = render(BUNDLE_ROOT, listed_urls())
    current = LARGE_FILES.read_text() if LARGE_FILES.is_file() else ""
    if flag(update):
        write_text(LARGE_FILES, expected)
        print(f"wrote {LARGE_FILES}")
        return True
    if current != expected:
        print(
            f"{LARGE_FILES.name} does not list models/ as it is (a weight file changed, came or "
            "went): run `python -m scripts.large_files --update true`",
            file=sys.stderr,
        )
        return False
    print(f"{LARGE_FILES.name} is up to date")
    return True


def main(update: bool | str = False) -> None:
    if not large_files(update):
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
