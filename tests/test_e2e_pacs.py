"""The Review page's "From PACS" flow in real Chromium against a real Orthanc, with a second reviewer's session
running beside it: search, pick, start, the image shown; the other reviewer sees none of it. Screenshots go to
test-artifacts/ (pacs-search.png, pacs-session.png, pacs-second-reviewer.png)."""
from __future__ import annotations

import re

import pytest
from app_fixtures import PROJECT_ROOT, running_app
from browser_fixtures import browser_page, snapshot
from playwright.sync_api import expect
from test_e2e_review import sign_in

from covid_models.pacs.scratch_orthanc import xray_dicom

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_a_session_from_the_pacs_in_the_browser_beside_a_second_reviewer(browser, orthanc, real_data,
                                                                         tmp_path):
    image = sorted((real_data / "xray" / "images").glob("*.jpg"))[20]
    orthanc.upload([xray_dicom(image, accession="ACC-BROWSER-1", patient_id="PID-BROWSER", rows=400,
                               study_date="20240311")])
    env = {"COVID_WEIGHTS_DIR": str(PROJECT_ROOT / "weights"), "COVID_REVIEW_DB": str(tmp_path / "reviews.sqlite3"),
           "COVID_DICOMWEB_URL": orthanc.dicomweb_url}
    with running_app(env) as (url, _process), browser_page(browser, "pacs-flow") as page, \
            browser_page(browser, "pacs-second") as other:
        sign_in(page, f"{url}/review", "Dr Ada Pacs", "Dr Ada Pacs's passphrase", register=True)
        sign_in(other, f"{url}/review", "Dr Bob Pacs", "Dr Bob Pacs's passphrase", register=True)
        page.get_by_text("Start a session from the PACS").wait_for()
        page.get_by_label("Accession number").fill("ACC-BROWSER-1")
        other.get_by_label("Patient ID").fill("PID-BROWSER")  # the second reviewer searches at the same time
        page.get_by_role("button", name=re.compile("Search the PACS")).click()
        other.get_by_role("button", name=re.compile("Search the PACS")).click()
        page.get_by_text("Page 1: 1 study").wait_for()
        studies = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Studies for the session")
        studies.locator("input").click()
        studies.locator("input").fill("ACC-BROWSER-1")
        studies.locator("input").press("Enter")
        page.keyboard.press("Escape")
        start = page.get_by_role("button", name=re.compile("Start session from the PACS"))
        expect(start).to_be_enabled()
        snapshot(page, "pacs-search")
        start.click()
        page.get_by_text("Image 1 of 1: DX series 1 image 1").wait_for()
        page.get_by_text("COVID-19 probability").first.wait_for()
        page.locator('[data-testid="stImage"]').first.wait_for()
        expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0)  # the run has finished
        snapshot(page, "pacs-session")
        other.get_by_text("Page 1: 1 study").wait_for()
        expect(other.get_by_text("You have no earlier session.")).to_be_visible()  # Ada's session is not his
        expect(other.get_by_text("DX series 1 image 1")).to_have_count(0)
        snapshot(other, "pacs-second-reviewer")
