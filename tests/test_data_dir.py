"""The data folder's layout (kernel.data_dir): where things are written, and the trash that never deletes."""
from __future__ import annotations

from kernel.data_dir import DataDir


def test_trashing_the_same_name_twice_keeps_both_copies(tmp_path):
    paths = DataDir(tmp_path)
    moved = []
    for text in ("first", "second"):  # well within one second: the time in the name is the same
        folder = paths.adapter("pirate")
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(text)
        moved.append(paths.move_to_trash(folder))
    assert [p.parent for p in moved] == [paths.trash, paths.trash] and moved[0] != moved[1]
    assert all(p.name.startswith("pirate-") for p in moved)
    assert [(p / "adapter_config.json").read_text() for p in moved] == ["first", "second"]
    assert not paths.adapter("pirate").exists()
