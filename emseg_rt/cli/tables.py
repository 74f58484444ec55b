"""Tables and long lines on stdout, readable on a terminal and in a log alike.

On a terminal: rich, fitted to its width; a cell too long for its column folds onto more lines instead of being
cut to 'vanilla-…' (columns built with `no_wrap`, such as names, are kept whole). Anywhere else (a pipe, a file, a
batch job's log), and on a terminal too narrow for even the folded table: the same table as plain ASCII
(markdown-style, '| a | b |') at its natural width, no colours, nothing wrapped or cut, so every name in it
stays whole and greppable.
"""

from __future__ import annotations

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

PLAIN_WIDTH = 1_000_000  # outside a terminal: wide enough that no table or line is ever fitted to a width


def out_console() -> Console:
    """A console for stdout: rich's own on a terminal; elsewhere no styles and no line ever wrapped or cut."""
    console = Console()
    if console.is_terminal:
        return console
    return Console(width=PLAIN_WIDTH, soft_wrap=True, color_system=None, highlight=False)


def print_table(table: Table, console: Console | None = None) -> None:
    """Print `table` to `console` (default: `out_console()`): folded to fit on a terminal, plain ASCII at its
    natural width elsewhere or where even folded it does not fit (trailing spaces dropped)."""
    console = console or out_console()
    if console.is_terminal:
        unbounded = console.options.update(max_width=PLAIN_WIDTH)  # else rich caps the measure at the width
        fits = Measurement.get(console, unbounded, table).minimum <= console.width  # its longest words fit
        for column in table.columns:
            column.overflow = "fold"  # a cell too long for its column goes on the next line, never '…'
        if fits:
            console.print(table)
            return
    table.box, table.title_justify, table.caption_justify = box.MARKDOWN, "left", "left"
    plain = Console(width=PLAIN_WIDTH, color_system=None, highlight=False)  # no styles: plain text
    with plain.capture() as captured:
        plain.print(table)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()), file=console.file)


def print_markdown(text: str) -> None:
    """A markdown document (e.g. a results table): rendered by rich on a terminal, the text as it is elsewhere."""
    console = Console()
    if console.is_terminal:
        from rich.markdown import Markdown  # deferred: CLI start-up (rich's markdown loads its parser)

        console.print(Markdown(text))
        return
    typer.echo(text.rstrip("\n"))
