"""The README commands CI runs: the ```bash blocks under "## Two commands", in order.

`python .ci/readme_commands.py` prints them NUL-separated for .ci/run, so that CI runs what a
new user copies, as written, whenever the README changes (tests/test_ci.py checks their shape).
Standard library only: it runs in the fresh virtual environment before anything is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Two commands"


def readme_commands(text: str) -> list[str]:
    """The ```bash blocks between the SECTION heading and the next ``## `` heading."""
    if SECTION not in text:
        raise ValueError(f"README has no {SECTION!r} section")
    section = re.split(r"^## ", text.split(SECTION, 1)[1], maxsplit=1, flags=re.M)[0]
    return [block.strip() for block in re.findall(r"^```bash\n(.*?)^```", section, re.M | re.S)]


if __name__ == "__main__":
    sys.stdout.write("\0".join(readme_commands(README.read_text())))
