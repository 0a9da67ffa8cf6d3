"""An input file's defects are reported together, in file order, capped."""

from __future__ import annotations

import pytest

from rlhf_operator.workloads.errors import Defects, StageConfigError


def test_no_defects_raises_nothing() -> None:
    Defects("rankings file f").raise_if_any()


def test_defects_listed_in_file_order_with_the_first_reason() -> None:
    defects = Defects("rankings file f")
    defects.add("line 9", "a tie.", "TiedRanking")
    defects.add("line 2", "not valid JSON.", "MalformedRow")
    with pytest.raises(StageConfigError) as raised:
        defects.raise_if_any()
    assert raised.value.message == "rankings file f has 2 defects: line 2: not valid JSON. | line 9: a tie."
    assert raised.value.reason == "MalformedRow"


def test_defects_are_capped() -> None:
    defects = Defects("prompts dataset p", cap=20)
    for number in range(1, 31):
        defects.add(f"line {number}", "empty.", "MalformedRow")
    with pytest.raises(StageConfigError) as raised:
        defects.raise_if_any()
    assert raised.value.message.count("empty.") == 20
    assert raised.value.message.endswith("... and 10 more") and "has 30 defects" in raised.value.message
