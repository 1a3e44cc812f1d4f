"""Text files that give classes readable names: a dataset's classes.txt, ImageNet's LOC_synset_mapping.txt,
predict's --classes. One "<folder> <readable name>" per line.

A folder name may hold spaces ("dog house"): a tab then ends it, or, where the folders are known, the
longest folder the line begins with. Files from other editors are read as they were meant: a UTF-8 byte
order mark (Windows Notepad) and CRLF line ends are no part of a name; text that is not UTF-8 is refused in
one line rather than read with replacement characters, and so is a folder named twice (which name?).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from alexnet.errors import UserError


def read_pairs(path: str | Path, folders: Collection[str] = ()) -> list[tuple[str, str]]:
    """(folder, name) for each line of ``path`` that is not blank, in order; the name is "" where the line
    gives none. ``folders``: the class folders there are, to find where a folder name with spaces ends."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise UserError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02X} on line {line}); save it as "
                        "UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e})") from None
    by_length = sorted(folders, key=len, reverse=True)
    pairs, seen = [], {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if "\t" in line.strip(" "):   # a trailing tab too: "big cat<TAB>" names the folder "big cat"
            folder, _, name = line.strip(" ").partition("\t")
        else:
            line = line.strip()
            folder = next((f for f in by_length if line == f or (line.startswith(f) and line[len(f)].isspace())),
                          None)
            folder, name = (folder, line[len(folder):]) if folder else (line.split(maxsplit=1) + [""])[:2]
        folder, name = folder.strip(), name.strip()
        if folder in seen:
            raise UserError(f"{path} names {folder!r} twice (lines {seen[folder]} and {number}); keep one")
        seen[folder] = number
        pairs.append((folder, name))
    return pairs
