"""``--help`` lists options in sections (input, model, segment everything, indices, output, run), as does the CLI
reference generated from it; an option without a group still shows, under "Other options"."""

from __future__ import annotations

import re

import click
from click.testing import CliRunner

from geosam.cli.help import GROUP_OF, SECTIONS, GroupedCommand, GroupedOption, group_of, option
from geosam.cli.main import cli


def sections(help_text: str) -> dict[str, list[str]]:
    """Section title -> the option flags listed under it, in order."""
    out: dict[str, list[str]] = {}
    current = None
    for line in help_text.splitlines():
        if re.match(r"^[A-Z][\w ]*:$", line):
            current = line[:-1]
            out[current] = []
        elif current and (m := re.match(r"^\s{2}((?:-\w, )?--?[\w-]+)", line)):
            out[current].append(m.group(1).split(", ")[-1])
    return out


def help_of(*args: str) -> str:
    res = CliRunner().invoke(cli, [*args, "--help"], terminal_width=100)
    assert res.exit_code == 0, res.output
    return res.output


def test_segment_help_is_grouped() -> None:
    got = sections(help_of("segment"))
    assert list(got) == ["Input", "STAC input", "Model", "Segment everything", "Indices", "Output", "Outlines", "Run",
                         "Other options"]
    assert {"--assets", "--stac-search", "--mask-values"} <= set(got["STAC input"])
    assert {"--simplify", "--regularize", "--smooth", "--fill-holes"} <= set(got["Outlines"])
    assert {"--bands", "--chip-size", "--fill-value"} <= set(got["Input"])
    assert got["Model"][:3] == ["--model", "--device", "--dtype"]
    assert "--points-per-side" in got["Segment everything"] and "--min-index" in got["Indices"]
    assert {"--output", "--overlay", "--label-raster", "--overwrite"} <= set(got["Output"])
    assert {"--scheduler", "--resume", "--progress", "--profile"} <= set(got["Run"])
    assert got["Other options"] == ["--help"]  # every option of segment has its group


def test_every_command_lists_its_sections_in_one_order() -> None:
    titles = list(SECTIONS.values())
    for name in ["", *cli.commands]:
        got = sections(help_of(name) if name else help_of())
        got.pop("Commands", None)  # the geosam group's list of commands follows its options
        assert got, name
        if list(got) != ["Options"]:
            assert list(got) == sorted(got, key=titles.index), (name, list(got))
        flags = [f for fs in got.values() for f in fs]
        assert len(flags) == len(set(flags)), name  # each option once
    assert list(sections(help_of("prompt")))[:4] == ["Input", "STAC input", "Prompts", "Model"]
    assert all("STAC input" in sections(help_of(c)) for c in ("segment", "prompt", "text", "info"))
    assert "Text and exemplars" in sections(help_of("text"))


def test_an_option_without_a_group_still_shows_under_other_options() -> None:
    @click.command(cls=GroupedCommand)
    @click.option("--brand-new", help="Added by someone who did not pick a group.")
    @option("--later", group="run", help="Grouped where it is declared.")
    @click.option("--bands", help="Grouped by the table, by name.")
    def cmd(**_: object) -> None:
        """A command."""

    got = sections(CliRunner().invoke(cmd, ["--help"]).output)
    assert got == {"Input": ["--bands"], "Run": ["--later"], "Other options": ["--brand-new", "--help"]}


def test_group_attribute_wins_over_the_table() -> None:
    opt = GroupedOption(["--bands"], group="output")
    assert group_of(opt) == "output" and group_of(click.Option(["--bands"])) == "input"
    assert group_of(click.Option(["--never-heard-of"])) == "other"


def test_the_table_names_only_existing_options_and_known_sections() -> None:
    names = {p.name for c in [cli, *cli.commands.values()] for p in c.params}
    assert set(GROUP_OF) <= names, sorted(set(GROUP_OF) - names)
    assert set(GROUP_OF.values()) <= set(SECTIONS)


def test_cli_reference_shows_the_sections() -> None:
    from scripts.cli_reference import TARGET

    text = TARGET.read_text()
    block = text.split("## `geosam segment`", 1)[1]
    for title in ("Input:", "Model:", "Segment everything:", "Indices:", "Output:", "Run:"):
        assert f"\n{title}\n" in block, title
