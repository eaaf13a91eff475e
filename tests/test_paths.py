"""kernel.paths.owned_file: a typed path resolves only to a file inside the folders the app owns."""
from __future__ import annotations

import pytest

from kernel.errors import ArenaError
from kernel.paths import owned_file


@pytest.fixture
def roots(tmp_path):
    owned = [tmp_path / "app" / "datasets", tmp_path / "app" / "uploads"]
    for root in owned:
        root.mkdir(parents=True)
    (owned[0] / "mine.json").write_text("[]", encoding="utf-8")
    (owned[1] / "suite.jsonl").write_text("{}\n", encoding="utf-8")
    outside = tmp_path / "outside.json"
    outside.write_text("[]", encoding="utf-8")
    (owned[0] / "out.json").symlink_to(outside)
    (owned[0] / "in.json").symlink_to(owned[1] / "suite.jsonl")
    return owned


def refusal(typed, roots, suffixes=()) -> str:
    with pytest.raises(ArenaError) as caught:
        owned_file(typed, roots, "dataset", suffixes)
    return str(caught.value)


def test_files_inside_the_owned_folders_resolve(roots):
    assert owned_file(str(roots[0] / "mine.json"), roots, "dataset") == (roots[0] / "mine.json").resolve()
    assert owned_file("suite.jsonl", roots, "dataset") == (roots[1] / "suite.jsonl").resolve()  # a bare name
    assert owned_file(str(roots[0] / "in.json"), roots, "dataset") == (roots[1] / "suite.jsonl").resolve()


def test_everything_else_gets_the_same_line(roots, tmp_path):
    typed = ["/etc/passwd", "/etc/no-such-file", str(tmp_path / "outside.json"), "../../outside.json",
             str(roots[0] / ".." / ".." / "outside.json"), str(roots[0] / "out.json"), "out.json",
             str(roots[0]), "", "   ", None, 7, "mine\x00.json", str(roots[0] / "missing.json")]
    lines = {refusal(t, roots) for t in typed}
    assert lines == {"dataset: pick one of the listed files or upload one; other paths are not read"}
    assert refusal("mine.json", roots, suffixes=(".jsonl",)) in lines  # a file of the wrong kind, too
