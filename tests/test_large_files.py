"""large_files.yml lists every weight file with the hash it has now: replacing models/*.pt fails
here until `python -m scripts.large_files --update true` has rewritten it."""

from __future__ import annotations

from monai.bundle.scripts import download_large_files

from scripts.large_files import LARGE_FILES, listed_urls, render
from tests.conftest import REPO


def test_large_files_lists_every_weight_file_with_its_hash():
    assert LARGE_FILES.read_text() == render(REPO, listed_urls()), (
        "large_files.yml is out of date: run `python -m scripts.large_files --update true`"
    )
    weights = {path.relative_to(REPO).as_posix() for path in REPO.glob("models/**/*.pt")}
    assert set(listed_urls()) == weights


def test_monai_accepts_it_offline():
    """MONAI's own reader: every file is there with its hash, so nothing is downloaded (the
    placeholder URLs cannot resolve)."""
    download_large_files(bundle_path=str(REPO))
