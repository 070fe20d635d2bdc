"""The one reader of the YAML files people write: campaigns, settings, sweeps, learning curves.

YAML anchors and aliases let a small file describe a huge document (eight nested levels of
nine aliases, the "billion laughs", stand for 387 million strings), and a value that large
would then be validated, printed in an error message and hashed. :func:`load_yaml` refuses,
before anything is built from it, a file over :data:`MAX_YAML_BYTES`, a document whose
aliases expand to more than :data:`MAX_YAML_NODES` nodes or nest deeper than
:data:`MAX_YAML_DEPTH`, and a recursive alias. Depth is counted on the parser's events and
the expansion on the parsed node graph, which is as small as the file, so a refusal takes
milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: Largest YAML file read (bytes); a campaign of 20,000 materials, one line each, is ~1.5 MB.
MAX_YAML_BYTES = 8 * 1024 * 1024
#: Most nodes (scalars, lists, mappings) of a document with every alias expanded.
MAX_YAML_NODES = 2_000_000
#: Deepest nesting of lists and mappings.
MAX_YAML_DEPTH = 64

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """The document of YAML file ``path`` (None if empty), read with YAML's safe loader.

    Parameters
    ----------
    path
        The file.
    what
        What the file is, for error messages (``campaign file``, ``settings file``...).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        One line naming the file: too large, not UTF-8, not valid YAML, aliases that
        expand past :data:`MAX_YAML_NODES` nodes or :data:`MAX_YAML_DEPTH` levels, or refer
        to themselves.
    """
    path = Path(path)
    where = f"{what} {path}"
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ValueError(f"{where} has {size:,} bytes, over the limit of {MAX_YAML_BYTES:,}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where} is not UTF-8 text (byte {exc.start})") from None
    loader = None
    try:
        _check_depth(text, where)
        loader = _Loader(text)
        root = loader.get_single_node()
        if root is None:
            return None
        _check_expansion(root, where)
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise ValueError(f"{where} is not valid YAML: {message[:300]}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_depth(text: str, where: str) -> None:
    """Raise ValueError if lists and mappings of ``text`` nest deeper than
    :data:`MAX_YAML_DEPTH` (checked on the parser's events, before a node graph exists:
    composing a deeply nested document recurses)."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ValueError(
                    f"{where}: lists and mappings nest deeper than {MAX_YAML_DEPTH} levels "
                    f"(line {event.start_mark.line + 1})"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_expansion(root: yaml.Node, where: str) -> None:
    """Raise ValueError if the document of ``root`` expands past the limits or recurses.

    Post-order walk of the node graph: each node's expanded size is computed once, so the
    work is proportional to the file, not to the expansion.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_YAML_NODES:
                raise ValueError(
                    f"{where}: its aliases expand to more than {MAX_YAML_NODES:,} values "
                    "(a YAML alias bomb?); refused"
                )
            continue
        if key in sizes:
            continue
        if key in on_path:
            line = node.start_mark.line + 1
            raise ValueError(f"{where}: a YAML alias refers to itself (line {line})")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []
