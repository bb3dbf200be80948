"""``vault log --graph``: the lineage DAG drawn in the terminal, git-style.

Each specimen is a node whose parents are the specimens it was derived from; a derived specimen
with two parents is drawn as a merge. The drawing itself is asciidag's port of git's
``graph.c``; we only give it the nodes in an order it can draw. Journal order (newest first) is
such an order, because a parent is always committed before its children.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# Imported only by `vault log --graph` (lazily), so this import costs `vault --help` nothing.
from asciidag.graph import Graph
from asciidag.node import Node

if TYPE_CHECKING:
    from .repository import LogEntry

__all__ = ["label", "render_graph"]


def label(entry: LogEntry) -> str:
    """One line describing a specimen: id, short commit, kind and message."""
    c = entry.commit
    message = c.message.splitlines()[0] if c.message else ""
    text = f"{entry.specimen_id}  {entry.digest[:12]}  {c.manifest.domain}/{c.manifest.method}"
    return f"{text}  {message}" if message else text


def render_graph(entries: Sequence[LogEntry], color: bool = False) -> list[str]:
    """Draw the lineage of ``entries`` (from :meth:`Repository.log`) as lines of ASCII art.

    Children are drawn above their parents; edges to parents outside ``entries`` are left out.

    Args:
        entries: the specimens to draw.
        color: colour the lineage columns with ANSI escapes (for a terminal).

    Returns:
        The lines, without newlines (empty for no entries).
    """
    # Newest first by journal position: children before parents, as the renderer requires.
    ordered = sorted(entries, key=lambda e: e.seq, reverse=True)
    nodes: dict[str, Any] = {}
    for e in reversed(ordered):  # parents first, so their nodes exist when a child is made
        parents = [nodes[p] for p in e.commit.parents if p in nodes]
        nodes[e.digest] = Node(label(e), parents=parents)
    out = io.StringIO()
    _OrderedGraph(fh=out, use_color=color).show_in_order([nodes[e.digest] for e in ordered])
    return out.getvalue().splitlines()


class _OrderedGraph(Graph):  # type: ignore[misc]
    """asciidag's Graph, fed nodes in a known topological order.

    ``Graph.show_nodes`` discovers the order itself with a recursive walk that visits every path
    (exponential on merge-heavy DAGs, and a RecursionError on long chains); we already have the
    order, so this replays the loop of ``show_nodes`` without the walk.
    """

    def show_in_order(self, nodes: Sequence[Any]) -> None:
        for i, node in enumerate(nodes):
            self._update(node)
            self._show_commit()
            self.outfile.write(node.item)
            if not self._is_commit_finished():
                self.outfile.write("\n")
                self._show_remainder()
            self.outfile.write("\n")
            if not node.parents and self.num_new_columns == 0 and i + 1 < len(nodes):
                # A root with no line continuing below: without a gap the next, unrelated
                # specimen would sit right under it, which reads as "its parent".
                self.outfile.write("\n")
