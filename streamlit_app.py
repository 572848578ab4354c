"""Entry point of the dashboard: `streamlit run streamlit_app.py`.

Sets the page configuration, shows the research-use notice on every page and hands over to the page
the user picked; each page is a script under pages/ that reads state and calls the library.
The CPU policy (`covid_models.runtime`: OpenMP threads sleep instead of spinning, malloc keeps freed
activations) is applied before anything imports torch, so a second torch process on the machine (a training
run, predict.py, another replica) slows the server's forward passes about 2x instead of 26-50x. The shipped
models are loaded and run once in a background thread as soon as the server serves its first run, so that
the first upload does not pay for it.
"""
from __future__ import annotations

from covid_models.runtime import configure

configure()  # before torch is imported: OpenMP reads its wait policy once, when torch loads it

import streamlit as st  # noqa: E402

from covid_models import RESEARCH_USE_NOTICE  # noqa: E402
from pages.shared import app_navigation, skipped_models_note, warm_models_in_background  # noqa: E402

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
