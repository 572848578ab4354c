"""Entry point of the dashboard: `streamlit run streamlit_app.py`.

Applies the server's CPU policy (covid_models.runtime), sets the page configuration, shows the research-use
notice on every page and hands over to the page the user picked; each page is a script under pages/ that reads
state and calls the library.
"""
from __future__ import annotations

from covid_models import runtime

runtime.configure()  # before the pages import torch: OpenMP reads its wait policy when torch loads it

import streamlit as st  # noqa: E402

from covid_models import RESEARCH_USE_NOTICE  # noqa: E402
from pages.shared import app_navigation, skipped_models_note  # noqa: E402

st.set_page_config(page_title="COVID-19 chest imaging screening", page_icon=":material/radiology:",
                   layout="wide", initial_sidebar_state="expanded")

navigation = st.navigation([
    st.Page("pages/analyze.py", title="Analyze", icon=":material/radiology:", default=True),
    st.Page("pages/scan.py", title="CT scan", icon=":material/view_in_ar:"),
    st.Page("pages/review.py", title="Review session", icon=":material/fact_check:"),
    st.Page("pages/performance.py", title="Model performance", icon=":material/monitoring:"),
    st.Page("pages/dataset.py", title="Dataset statistics", icon=":material/bar_chart:"),
    st.Page("pages/about.py", title="About", icon=":material/info:"),
])

with st.sidebar:
    st.warning(RESEARCH_USE_NOTICE, icon=":material/health_and_safety:")
skipped_models_note()

with app_navigation():
    navigation.run()
