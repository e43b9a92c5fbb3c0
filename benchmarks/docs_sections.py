"""docs/benchmarks.md is written section by section: each benchmark replaces its own."""

from pathlib import Path

from edgezoo.fileio import atomic_path


def replace_section(docs: Path, title: str, text: str) -> None:
    """Replace the section that starts with the heading `title` (or append it), leaving the
    rest of the file as it is; written atomically."""
    existing = docs.read_text() if docs.exists() else "# Benchmarks\n"
    start = existing.find(f"\n{title}\n")
    if start == -1:
        updated = existing.rstrip("\n") + "\n\n" + text
    else:
        end = existing.find("\n## ", start + 1)
        updated = existing[: start + 1] + text + (existing[end:] if end != -1 else "")
    docs.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(docs) as partial:
        partial.write_text(updated)
