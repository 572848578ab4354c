"""The one bare-file-name rule shared by the review store and the reports."""
from __future__ import annotations

from covid_models.analysis.report import bare_file_name as report_rule
from covid_models.imaging.filenames import bare_file_name
from covid_models.reviews.identity import Reviewer
from covid_models.reviews.records import NewItem
from covid_models.reviews.store import ReviewStore


def test_only_the_last_component_of_either_separator_style_is_kept() -> None:
    assert bare_file_name("C:\\Patients\\Smith John\\img.dcm") == "img.dcm"
    assert bare_file_name("/data/DOE^JOHN/2020/chest.png") == "chest.png"
    assert bare_file_name("mixed/DOE\\JOHN/x.png") == "x.png"
    assert bare_file_name("  spaced   name\x00\x07.png ") == "spaced name.png"
    assert bare_file_name("", fallback="image-abc") == "image-abc"
    assert bare_file_name("/data/patient/") == "patient"


def test_long_names_are_shortened_in_the_middle_keeping_the_extension() -> None:
    shortened = bare_file_name("a" * 300 + ".dcm", limit=120)
    assert len(shortened) == 120 and shortened.endswith("....dcm")


def test_the_report_and_the_review_store_use_the_same_rule(tmp_path) -> None:
    name = r"C:\Users\radiology\DOE^JOHN\lateral view.dcm"
    assert report_rule is bare_file_name
    with ReviewStore(f"sqlite:///{tmp_path / 'r.sqlite3'}") as store:
        kim = Reviewer("name:dr kim", "Dr Kim")
        session = store.start_session(kim, "m", "xray", [NewItem("a" * 64, name, "covid", 0.5, 0.5)])
        assert store.item(session, 0).display_name == bare_file_name(name, limit=255) == "lateral view.dcm"
