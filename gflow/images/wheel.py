"""A byte-for-byte reproducible wheel of the gflow that is running (this checkout), for images.

``pip wheel .`` stamps the build time into the zip, so two builds of the same source differ and
would give two image tags. This writes the wheel itself: the package's files in sorted order,
stored uncompressed (zlib versions differ between machines), with fixed timestamps and modes,
and the ``dist-info`` pip needs (metadata, entry points, RECORD). Same source, same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tomllib
import zipfile
from functools import lru_cache

from gflow.images.ignore import walk

_EPOCH = (1980, 1, 1, 0, 0, 0)
_FALLBACK_REQUIRES = ("pydantic>=2.6,<3", "rich>=13", "click>=8.1")


def _package_dir() -> str:
    import gflow

    return os.path.dirname(os.path.abspath(gflow.__file__))


@lru_cache(maxsize=1)
def project_metadata() -> dict:
    """gflow's name, version, runtime requirements and entry points (from the checkout's pyproject)."""
    import gflow

    meta: dict = {"version": gflow.__version__, "requires": list(_FALLBACK_REQUIRES),
                  "entry_points": {"console_scripts": {"gflow": "gflow.cli:main"}}}
    pyproject = os.path.join(os.path.dirname(_package_dir()), "pyproject.toml")
    if os.path.isfile(pyproject):
        with open(pyproject, "rb") as f:
            proj = tomllib.load(f).get("project", {})
        meta["requires"] = list(proj.get("dependencies", meta["requires"]))
        eps: dict[str, dict[str, str]] = {}
        if proj.get("scripts"):
            eps["console_scripts"] = dict(proj["scripts"])
        for group, items in (proj.get("entry-points") or {}).items():
            eps[group] = dict(items)
        meta["entry_points"] = eps or meta["entry_points"]
    else:
        try:
            from importlib.metadata import requires

            meta["requires"] = [r for r in requires("gflow") or [] if "extra ==" not in r]
        except Exception:  # noqa: BLE001, S110 - not installed: the fallback requirements stand
            pass
    return meta


def _info(name: str, mode: int = 0o644) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, date_time=_EPOCH)
    zi.compress_type = zipfile.ZIP_STORED
    zi.create_system = 3
    zi.external_attr = (0o100000 | mode) << 16
    return zi


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def gflow_wheel() -> tuple[str, bytes]:
    """``(filename, bytes)`` of a deterministic wheel of the running gflow package.

    ``GFLOW_WHEEL=/path/to/gflow-X-py3-none-any.whl`` uses that wheel instead (a released gflow,
    or a snapshot that stays put while the checkout is being edited).
    """
    pinned = os.environ.get("GFLOW_WHEEL")
    if pinned:
        with open(pinned, "rb") as f:
            return os.path.basename(pinned), f.read()
    meta = project_metadata()
    version = meta["version"]
    dist = f"gflow-{version}.dist-info"
    files: list[tuple[str, bytes]] = []
    for rel, path in walk(_package_dir()):
        with open(path, "rb") as f:
            files.append((f"gflow/{rel}", f.read()))
    requires = "".join(f"Requires-Dist: {r}\n" for r in meta["requires"])
    metadata = f"Metadata-Version: 2.1\nName: gflow\nVersion: {version}\n{requires}"
    wheel = "Wheel-Version: 1.0\nGenerator: gflow.images\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    eps = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(items.items())) + "\n"
                  for group, items in sorted(meta["entry_points"].items()))
    files += [(f"{dist}/METADATA", metadata.encode()), (f"{dist}/WHEEL", wheel.encode()),
              (f"{dist}/entry_points.txt", eps.encode())]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files) + f"{dist}/RECORD,,\n"
    files.append((f"{dist}/RECORD", record.encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files:
            z.writestr(_info(name), data)
    return f"gflow-{version}-py3-none-any.whl", buf.getvalue()
