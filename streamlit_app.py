"""Entry point of the dashboard: `streamlit run streamlit_app.py`.

Sets the page configuration, shows the research-use notice on every page and hands over to the page
the user picked; each page is a script under pages/ that reads state and calls the library.
The CPU policy (`covid_models.runtime`: OpenMP threads sleep instead of spinning, malloc keeps freed
activations) is applied before anything imports torch, so a second torch process on the machine (a training
run, predict.py, another replica) slows the server's forward passes about 2x instead of 26-50x.

`streamlit run` finds the `st.App` below (`app`), imports this file as a module and serves it: the App's lifespan
loads the shipped models and runs each once (`pages.shared.warm_models_in_background`) as the server starts, and the
server answers only once that is done, so that the first visitor's upload does not pay for it. Each visitor's run
executes this same file as a script (`__main__`), which builds the pages; its call of the warm-up is a no-op once
the models are warm, and warms them again in the background after "Clear cache" (an AppTest starts nothing).
`pages.shared` is imported once Streamlit's runtime runs, so that its caches are declared against it.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from covid_models.runtime import configure

configure()  # before torch is imported: OpenMP reads its wait policy once, when torch loads it

import streamlit as st  # noqa: E402

from covid_models import RESEARCH_USE_NOTICE  # noqa: E402


def main() -> None:
    """One run of a visitor's session: the page configuration, the navigation, the notice, the chosen page."""
    from pages.shared import app_navigation, skipped_models_note, warm_models_in_background

    st.set_page_config(page_title="COVID-19 chest imaging screening", page_icon=":material/radiology:",
                       layout="wide", initial_sidebar_state="expanded")
    navigation = st.navigation([
        st.Page("pages/analyze.py", title="Analyze", icon=":material/radiology:", default=True),
        st.Page("pages/scan.py", title="CT scan", icon=":material/view_in_ar:"),
        st.Page("pages/review.py", title="Review session", icon=":material/fact_check:"),
        st.Page("pages/performance.py", title="Model performance", icon=":material/monitoring:"),
        st.Page("pages/validate.py", title="Validate locally", icon=":material/fact_check:"),
        st.Page("pages/dataset.py", title="Dataset statistics", icon=":material/bar_chart:"),
        st.Page("pages/about.py", title="About", icon=":material/info:"),
    ])
    warm_models_in_background()
    with st.sidebar:
        st.warning(RESEARCH_USE_NOTICE, icon=":material/health_and_safety:")
    skipped_models_note()
    with app_navigation():
        navigation.run()


@asynccontextmanager
async def warm_at_start(_app: st.App) -> AsyncIterator[None]:
    """The server's start-up: the models load and run once in their thread; the server serves once it is done."""
    from pages.review_sign_in import check_admin_token
    from pages.shared import warm_models_in_background

    check_admin_token()
    warming = warm_models_in_background()
    if warming is not None:
        await asyncio.to_thread(warming.join)
    yield


if __name__ == "__main__":
    main()
else:
    app = st.App(Path(__file__).resolve(), lifespan=warm_at_start)
