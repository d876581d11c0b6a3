"""Register the broken backends through the real ``duro.backends`` entry-point group.

:func:`plugin_env` writes a ``*.dist-info`` directory (``METADATA`` and ``entry_points.txt``)
into a directory and returns an environment whose ``PYTHONPATH`` holds it and this package's
parent, so a ``duro`` subprocess finds the plugins the way it finds installed ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from broken_backends.defects import DEFECTS, STAGE2_DEFECTS

__all__ = ["BAD_PLUGINS", "plugin_env"]

BAD_PLUGINS = {
    "bad-missing-class": "broken_backends.defects:NoSuchBackend",
    "bad-import": "broken_backends.raises_on_import:Backend",
    "bad-abstract": "broken_backends.bad_plugins:MissingMethods",
}
"""Plugins that cannot be used: a missing class, a module that raises, abstract methods."""


def plugin_env(directory: Path) -> dict[str, str]:
    """Write the plugin distribution into *directory*; the environment for subprocesses."""
    dist = directory / "duro_broken_backends-0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: duro-broken-backends\n"
                                   "Version: 0.0\n", encoding="utf-8")
    lines = ["[duro.backends]"]
    lines += [f"{scheme} = broken_backends.defects:{cls.__name__}"
              for scheme, (cls, _) in (DEFECTS | STAGE2_DEFECTS).items()]
    lines += [f"{scheme} = {target}" for scheme, target in BAD_PLUGINS.items()]
    lines.append("broken-s3-gc = broken_backends.s3_gc:UnfencedGcS3")
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = dict(os.environ)
    paths = [str(directory), str(Path(__file__).parent.parent)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["COLUMNS"] = "250"
    return env
