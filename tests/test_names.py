"""Names from user data as path components: never a separator, never outside the folder."""

import os

import pytest

from msm_mae_jax.core.names import MAX_COMPONENT, path_component


@pytest.mark.parametrize(
    "value",
    [
        "../../../../tmp/x/ESCAPED",
        "..",
        ".",
        "",
        "a/b",
        "a\\b",
        "/abs",
        ".hidden",
        "x\x00y",
        "é",
        "a" * 500,
        "~",
        "C:\\evil",
    ],
)
def test_unsafe_values_stay_one_component_inside_the_folder(value, tmp_path):
    name = path_component(value)
    assert name and name not in (".", "..") and not name.startswith(".")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert len(name) <= MAX_COMPONENT + 9
    target = os.path.realpath(tmp_path / name)
    assert os.path.dirname(target) == os.path.realpath(tmp_path)


def test_safe_values_are_kept_and_distinct_values_stay_distinct():
    for v in ("1", "fold10", "train", "dog_bark", "id10001", "a.b-c+d"):
        assert path_component(v) == v
    values = ["a/b", "a_b", "a b", "a?b", "../a_b", "", ".", ".."]
    names = [path_component(v) for v in values]
    assert len(set(names)) == len(values)
    assert path_component(3) == "3"


def test_long_values_sharing_their_first_characters_stay_distinct(tmp_path):
    """Two long labels that differ only after the kept characters: each keeps a hash, so they
    never share a file; a value of exactly the kept length is itself."""
    head = ("Acoustic_guitar_Strum_Plucked_string_instrument_" * 2)[: MAX_COMPONENT - 1] + "x"
    assert len(head) == MAX_COMPONENT
    values = [head + "A", head + "B", head + "A" * 40, head]
    names = [path_component(v) for v in values]
    assert len(set(names)) == len(values), names
    assert names[-1] == head and all(n.startswith(head + "-") for n in names[:-1])
    for n in names:
        (tmp_path / f"{n}.json").write_text(n)
    assert len(list(tmp_path.iterdir())) == len(values)
