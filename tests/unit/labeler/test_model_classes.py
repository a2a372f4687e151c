"""`labeler models import --classes`: a class becomes a folder, so only safe names pass."""

from __future__ import annotations

import click
import pytest

from labeler.commands_models import _class_names
from workers.review import is_class_name


@pytest.mark.parametrize("bad", ["a/b", "../x", ".hidden", "x" * 65, "a\\b", "tab\there"])
def test_unsafe_class_names_are_refused_at_import(bad: str) -> None:
    with pytest.raises(click.UsageError, match="refused"):
        _class_names(f"ok,{bad}", None)


def test_safe_class_names_pass() -> None:
    assert _class_names("cat,dog,red fox,b-1.2+", None) == ["cat", "dog", "red fox", "b-1.2+"]


@pytest.mark.parametrize("name", ["cat\n", "cat\r", "a/b", "", " cat"])
def test_a_class_name_is_a_full_match(name: str) -> None:
    assert not is_class_name(name)
