"""Where the command line writes: results a script may read on stdout (``out``), everything a person reads on
stderr (``console``: progress, logs, errors), and how an error is shown, the same for every command."""

from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)
out = Console()


def print_error(message: str) -> None:
    """``error: <message>`` on one line, however long: the terminal wraps it, so a path in it copies whole.
    Markup is escaped, since messages may hold [brackets]."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_result(line: str) -> None:
    """One line of a command's result on stdout (a written file's path, a version), exactly as given: no markup,
    no highlighting and never wrapped, so ``$(stereo-spot convert clip.mp4)`` is the path however long."""
    out.print(line, markup=False, highlight=False, soft_wrap=True)
