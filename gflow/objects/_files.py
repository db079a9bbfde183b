"""Reading text files whose bytes are untrusted: invalid UTF-8 is one error naming the file and the line."""

from __future__ import annotations

import codecs
import os
from pathlib import Path


def read_utf8(path: str | os.PathLike[str], *, what: str, error: type[ValueError]) -> str:
    """The text of ``path`` as UTF-8 (a leading byte-order mark dropped).

    Args:
        path: The file.
        what: What the file is, for the message ("FASTA file", "library").
        error: The exception class to raise (the caller's own, e.g. ``FastaError``).

    Raises:
        error: If a byte is not UTF-8, naming the file, the line and the byte.
    """
    data = Path(path).read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise error(f"{what} {path} line {line}: byte {column} of the line (0x{data[exc.start]:02x}) is not "
                    f"UTF-8 text ({exc.reason}); save the file as UTF-8") from None
