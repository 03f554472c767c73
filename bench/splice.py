"""Replace one generated section of bench/RESULTS.md, keeping what people wrote by hand.

Usage: python3 bench/splice.py NAME [FILE] < section

The section read from stdin goes between `<!-- NAME:start -->` and `<!-- NAME:end -->` (the markers are added
here), in place of what was there, or at the end of FILE when the markers are missing. A reading written by hand
inside the old section, between `<!-- NAME-reading:start -->` and `<!-- NAME-reading:end -->`, is carried over to
the end of the new one: a benchmark rerun refreshes its figures and never drops the text that explains them.
"""
import re
import sys


def splice(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    old = pattern.search(text)
    reading = None
    if old:
        reading = re.search(
            re.escape(f"<!-- {name}-reading:start -->") + r".*?" + re.escape(f"<!-- {name}-reading:end -->"),
            old.group(0),
            re.S,
        )
    section = start + "\n" + body.strip("\n") + "\n"
    if reading:
        section += "\n" + reading.group(0) + "\n"
    section += end
    if old:
        return text[: old.start()] + section + text[old.end() :]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python3 bench/splice.py NAME [FILE] < section")
    name = sys.argv[1]
    path = sys.argv[2] if len(sys.argv) == 3 else "bench/RESULTS.md"
    if not re.fullmatch(r"[a-z0-9-]+", name):
        sys.exit(f"splice: section name {name!r}: use lower-case letters, digits and '-'")
    try:
        text = open(path).read()
    except FileNotFoundError:
        text = "# Benchmark results\n"
    body = sys.stdin.read()
    if not body.strip():
        sys.exit(f"splice: nothing to write into section {name!r}; {path} left as it was")
    open(path, "w").write(splice(text, name, body))


if __name__ == "__main__":
    main()
