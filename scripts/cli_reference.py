"""Write docs/cli.md, the CLI reference, from the commands' own ``--help`` (run by the docs test and ``make docs``).

``python scripts/cli_reference.py`` rewrites the file; ``--check`` exits 1 when it is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "cli.md"


def render() -> str:
    """The reference as Markdown: ``geosam --help`` then each command's ``--help``, in the CLI's order."""
    from click.testing import CliRunner

    from geosam.cli.main import cli

    runner = CliRunner()
    parts = ["# CLI reference\n", "Generated from `--help` by `scripts/cli_reference.py`; do not edit by hand.\n"]
    for name in ["", *cli.commands]:
        args = [name, "--help"] if name else ["--help"]
        res = runner.invoke(cli, args, prog_name="geosam", terminal_width=100)
        assert res.exit_code == 0, res.output
        parts.append(f"## `geosam {name}`\n" if name else "## `geosam`\n")
        parts.append(f"```text\n{res.output.rstrip()}\n```\n")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
