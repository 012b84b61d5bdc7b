"""MkDocs hooks of this site (``hooks:`` in mkdocs.yml).

Local inventories: an entry of the Python handler's ``inventories:`` whose
``url`` is a path (no scheme), such as the vendored standard-library
inventory, is read from that file, relative to mkdocs.yml, so that the build
needs no network. mkdocstrings fetches every inventory through MkDocs' URL
cache, which keeps a copy for a day under the URL as key: the file's URL
carries a digest of its content, so an updated file is never served stale.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority


@event_priority(100)  # before mkdocstrings' on_config starts loading the inventories
def on_config(config: MkDocsConfig) -> MkDocsConfig:
    handlers = config.plugins["mkdocstrings"].config.handlers
    inventories = handlers.get("python", {}).get("inventories", [])
    root = Path(config.config_file_path).parent
    for position, entry in enumerate(inventories):
        url = entry if isinstance(entry, str) else entry.get("url", "")
        if urlsplit(url).scheme:
            continue
        path = (root / url).resolve()
        if not path.is_file():
            raise PluginError(f"inventory {url!r} in mkdocs.yml: no such file {path}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        local = f"{path.as_uri()}#sha256={digest}"
        inventories[position] = local if isinstance(entry, str) else {**entry, "url": local}
    return config
