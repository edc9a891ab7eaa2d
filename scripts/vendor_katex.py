"""Refresh the KaTeX copy that report.html inlines (harness/reports/katex/) from an npm tarball.

    cd "$(mktemp -d)" && npm pack katex          # writes katex-<version>.tgz; nothing is installed
    python scripts/vendor_katex.py katex-<version>.tgz

Keeps katex.min.js, contrib/auto-render.min.js and LICENSE as they are, and writes katex.css:
katex.min.css with each font's woff2 file inlined as a data URI (the woff and ttf fallbacks are
dropped; every browser that runs the page reads woff2), so the page needs no font files and no network.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import tarfile
from pathlib import Path

TARGET = Path(__file__).resolve().parent.parent / "harness" / "reports" / "katex"
KEPT = {"package/dist/katex.min.js": "katex.min.js", "package/dist/contrib/auto-render.min.js": "auto-render.min.js",
        "package/LICENSE": "LICENSE"}  # fmt: skip


def inline_fonts(css: str, read) -> str:
    """Each @font-face src becomes its woff2 file as a data URI."""

    def woff2_only(match: re.Match) -> str:
        font = re.search(r"url\((fonts/[^)]+\.woff2)\)", match.group(0)).group(1)
        data = base64.b64encode(read(f"package/dist/{font}")).decode("ascii")
        return f'src:url(data:font/woff2;base64,{data}) format("woff2")'

    out, count = re.subn(r"src:url\(fonts/[^;}]+", woff2_only, css)
    if count == 0 or "url(fonts/" in out:
        raise SystemExit("katex.min.css no longer looks as expected (src:url(fonts/...)); update this script")
    return out


def main(tarball: str) -> None:
    with tarfile.open(tarball) as tar:

        def read(name: str) -> bytes:
            return tar.extractfile(name).read()

        version = json.loads(read("package/package.json"))["version"]
        TARGET.mkdir(parents=True, exist_ok=True)
        for name, target in KEPT.items():
            (TARGET / target).write_bytes(read(name))
        (TARGET / "katex.css").write_text(inline_fonts(read("package/dist/katex.min.css").decode(), read))
        (TARGET / "VERSION").write_text(version + "\n")
    print(f"KaTeX {version} written to {TARGET}; update the version in {TARGET / 'README.md'}")


if __name__ == "__main__":
    main(*sys.argv[1:])
