"""Tag schemes: parsing ``B-PER``-style tags, telling IOB1/IOB2/BIOES apart, converting to IOB2."""

from __future__ import annotations

#: Prefix letters accepted in files, mapped to BIOES (BILOU's L and U are E and S).
PREFIXES = {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S"}
SCHEME_PREFIXES = {"iob2": ("B", "I"), "bioes": ("B", "I", "E", "S")}


class TagError(ValueError):
    """A tag sequence that its scheme does not allow; ``position`` is the token index."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(message)
        self.position = position



def parse_tag(tag: str) -> tuple[str, str] | None:
    """``"B-PER"`` -> ``("B", "PER")``, ``"O"`` -> ``("O", "")``; None if not a tag."""
    if tag == "O":
        return "O", ""
    prefix, sep, etype = tag.partition("-")
    if not sep or not etype or prefix not in PREFIXES:
        return None
    return PREFIXES[prefix], etype


def detect_scheme(sentences: list[list[tuple[str, str]]]) -> str:
    """``bioes`` if any E-/S- tag occurs, ``iob1`` if an I- tag starts an entity, else ``iob2``."""
    iob1 = False
    for tags in sentences:
        prev = ("O", "")
        for p, t in tags:
            if p in ("E", "S"):
                return "bioes"
            if p == "I" and not (prev[0] in ("B", "I") and prev[1] == t):
                iob1 = True
            prev = (p, t)
    return "iob1" if iob1 else "iob2"


def to_iob2(tags: list[tuple[str, str]], scheme: str) -> list[str]:
    """Validate parsed ``tags`` against ``scheme`` and return them as IOB2 strings."""
    out: list[str] = []
    n = len(tags)
    for i, (p, t) in enumerate(tags):
        prev = tags[i - 1] if i else ("O", "")
        nxt = tags[i + 1] if i + 1 < n else ("O", "")
        continues = prev[0] in ("B", "I") and prev[1] == t
        if p == "O":
            out.append("O")
            continue
        if scheme in ("iob1", "iob2") and p in ("E", "S"):
            raise TagError(i, f"'{p}-{t}' is a BIOES tag in a file read as {scheme.upper()}; set task.tag_scheme: bioes")
        if scheme == "iob2" and p == "I" and not continues:
            raise TagError(i, f"'I-{t}' does not continue a '{t}' entity (IOB2 starts entities with B-); "
                              "if the file is IOB1 set task.tag_scheme: iob1")
        if scheme == "bioes":
            if p in ("I", "E") and not continues:
                raise TagError(i, f"'{p}-{t}' does not continue a '{t}' entity (BIOES starts entities with B- or S-)")
            if p in ("B", "I") and not (nxt[0] in ("I", "E") and nxt[1] == t):
                raise TagError(i, f"'{p}-{t}' is not followed by I-{t} or E-{t} (BIOES ends entities with E- or S-)")
        if scheme == "iob1":
            out.append(f"I-{t}" if p == "I" and continues else f"B-{t}")
        else:
            out.append(f"{'B' if p in ('B', 'S') else 'I'}-{t}")
    return out


def iob2_to_bioes(tags: list[str]) -> list[str]:
    """Well-formed IOB2 -> BIOES."""
    out = []
    for i, tag in enumerate(tags):
        if tag == "O":
            out.append(tag)
            continue
        inside = i + 1 < len(tags) and tags[i + 1] == f"I-{tag[2:]}"
        if tag[0] == "B":
            out.append(tag if inside else "S" + tag[1:])
        else:
            out.append(tag if inside else "E" + tag[1:])
    return out


def entity_type(tag: str) -> str:
    return tag[2:] if tag != "O" else ""
