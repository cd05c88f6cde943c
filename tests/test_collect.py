from pathlib import Path

import pytest

from mosaic.errors import MetadataError, UsageError
from mosaic.pipeline.collect import (
    check_template,
    collect_inputs,
    format_template,
    infer_column_kinds,
    match_metadata,
    read_metadata,
)


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path):
    for name in ["a/one.jpg", "a/two.PNG", "b/one.jpg", "c/d/three.webp", "notes.txt"]:
        touch(tmp_path / "imgs" / name)
    return tmp_path / "imgs"


def test_folder_is_searched_recursively_and_sorted(tree):
    inputs = collect_inputs(str(tree))
    names = [str(Path(p).relative_to(tree)) for p in inputs.paths]
    assert names == ["a/one.jpg", "a/two.PNG", "b/one.jpg", "c/d/three.webp"]
    assert [Path(p).name for p in inputs.ignored] == ["notes.txt"]  # reported, not dropped


def test_glob_and_list_file(tree, tmp_path):
    assert len(collect_inputs(str(tree / "**" / "*.jpg")).paths) == 2
    listing = touch(tmp_path / "list.txt", b"imgs/a/one.jpg\n# comment\n\nimgs/b/one.jpg\n")
    assert [Path(p).parent.name for p in collect_inputs(str(listing)).paths] == ["a", "b"]


def test_missing_input_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="matches no file"):
        collect_inputs(str(tmp_path / "nothing" / "*.jpg"))


def write_csv(tmp_path, text: str, encoding="utf-8") -> Path:
    return touch(tmp_path / "meta.csv", text.encode(encoding))


def test_csv_with_bom_crlf_and_quoted_newlines(tmp_path):
    path = write_csv(tmp_path, '\ufefffilename,Name,Note\r\none.jpg,Ann,"two\r\nlines"\r\n')
    metadata = read_metadata(path)
    assert metadata.columns == ["filename", "Name", "Note"]
    assert metadata.rows[0]["Note"] == "two\r\nlines"
    assert metadata.rows[0]["Name"] == "Ann"


def test_latin1_csv_is_detected(tmp_path):
    path = write_csv(tmp_path, "filename,city\none.jpg,Zürich\n", encoding="latin-1")
    metadata = read_metadata(path)
    assert metadata.rows[0]["city"] == "Zürich"
    assert metadata.encoding != "utf-8-sig"


def test_missing_filename_column_names_the_columns(tmp_path):
    path = write_csv(tmp_path, "file,title\none.jpg,x\n")
    with pytest.raises(MetadataError, match="no 'filename' column.*file, title"):
        read_metadata(path)
    assert read_metadata(path, filename_column="file").filename_column == "file"


def test_empty_csv_is_refused(tmp_path):
    with pytest.raises(MetadataError, match="empty"):
        read_metadata(write_csv(tmp_path, ""))


def test_matching_reports_both_sides_and_handles_duplicate_basenames(tree, tmp_path):
    csv_text = "filename,title\na/one.jpg,first\nb/one.jpg,second\ntwo.PNG,by name\nghost.jpg,x\n"
    match = match_metadata(collect_inputs(str(tree)), read_metadata(write_csv(tmp_path, csv_text)))
    inputs = collect_inputs(str(tree))
    rows = {Path(p).relative_to(tree).as_posix(): r for p, r in zip(inputs.paths,
                                                                   match.row_of_input)}
    assert rows == {"a/one.jpg": 0, "b/one.jpg": 1, "a/two.PNG": 2, "c/d/three.webp": None}
    assert match.rows_without_image == ["ghost.jpg"]
    assert [Path(p).name for p in match.images_without_row] == ["three.webp"]


def test_ambiguous_basename_is_not_guessed(tree, tmp_path):
    match = match_metadata(collect_inputs(str(tree)),
                           read_metadata(write_csv(tmp_path, "filename\none.jpg\n")))
    assert match.rows_without_image == ["one.jpg"]
    assert all(r is None for r in match.row_of_input)


def test_templates_format_and_validate():
    values = {"Name": "Ann", "Year": "1901"}
    assert format_template("{Name} ({Year})", values) == "Ann (1901)"
    assert format_template("{Name} {Missing}", values) == "Ann "
    check_template("--title", "{Name} ({Year})", ["Name", "Year"])
    with pytest.raises(UsageError, match="--title.*'Nmae'"):
        check_template("--title", "{Nmae}", ["Name"])
    with pytest.raises(UsageError, match="--url"):
        check_template("--url", "{Name", ["Name"])


def test_column_kinds(tmp_path):
    rows = ["filename,year,price,label,category,description"]
    for i in range(30):
        rows.append(f"{i}.jpg,{1900 + i},{i * 1.5 if i % 4 else ''},{i % 3},"
                    f"{'cat' if i % 2 else 'dog'},free text number {i} here")
    kinds = infer_column_kinds(read_metadata(write_csv(tmp_path, "\n".join(rows))))
    assert kinds == {"year": "year", "price": "number", "label": "facet",
                     "category": "facet", "description": "text"}


def test_relative_list_of_folders_with_nothing_in_common_matches_by_path(tree, monkeypatch):
    # A list file beside two folders, naming files relative to itself: the paths share
    # no folder, and the CSV names them as the list does (same basename in both).
    monkeypatch.chdir(tree)
    (tree / "list.txt").write_text("a/one.jpg\nb/one.jpg\n")
    (tree / "meta.csv").write_text("filename,title\nb/one.jpg,second\na/one.jpg,first\n")
    inputs = collect_inputs("list.txt")
    match = match_metadata(inputs, read_metadata("meta.csv"))
    rows = {p: r for p, r in zip(inputs.paths, match.row_of_input)}
    assert rows == {"a/one.jpg": 1, "b/one.jpg": 0}
    assert match.rows_without_image == [] and match.images_without_row == []
