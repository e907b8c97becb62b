"""MkDocs hook: the benchmark page shows README.md's "How it compares" section and its
plot, so the measured table has one source (the README, generated from benchmarks/)."""

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
_MARKER = re.compile(r"\{\{ README: (.+?) \}\}")


def _section(title):
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n") + len(title) + 5
    end = text.find("\n## ", start)
    return text[start : end if end >= 0 else None]


def on_files(files, config):
    # Images the README section shows, copied into the site under their repository path.
    for image in sorted((ROOT / "benchmarks").glob("*.png")):
        files.append(File(f"benchmarks/{image.name}", str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    def insert(match):
        # Images keep their paths (on_files copies them); links to Markdown files outside the
        # site become plain names.
        return re.sub(r"\[`?benchmarks/(\w+)\.md`?\]\([^)]*\)", r"`benchmarks/\1.md`", _section(match.group(1)))

    return _MARKER.sub(insert, markdown)
