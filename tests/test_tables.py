"""The one Markdown table writer and the one CSV writer."""

from __future__ import annotations

import csv

import pytest

from lightning_mtl.tables import markdown_table, write_csv


def test_markdown_table_writes_a_pipe_table_with_the_given_alignment():
    table = markdown_table(["model", "Δm %", "params"], [["lomt", "+1.25", "1,024"]], "-rc")
    assert table == "| model | Δm % | params |\n|---|---:|:---:|\n| lomt | +1.25 | 1,024 |"
    assert markdown_table(["a", "b"], [], "lr") == "| a | b |\n|:---|---:|"
    assert markdown_table(["a", "b"], [["1", ""]]) == "| a | b |\n|---|---|\n| 1 |  |"


def test_markdown_table_refuses_a_bad_alignment_or_row():
    with pytest.raises(ValueError, match="one of -lcr per column"):
        markdown_table(["a", "b"], [], "r")
    with pytest.raises(ValueError, match="one of -lcr per column"):
        markdown_table(["a"], [], "x")
    with pytest.raises(ValueError, match="a row has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [["1"]])


def test_write_csv_takes_every_key_in_order_of_first_appearance(tmp_path):
    path = write_csv([{"a": 1, "b": 2.5}, {"c": "x", "a": 3}], tmp_path / "t.csv")
    assert path.read_bytes() == b"a,b,c\r\n1,2.5,\r\n3,,x\r\n"
    assert list(csv.DictReader(path.read_text().splitlines()))[1] == {"a": "3", "b": "", "c": "x"}
