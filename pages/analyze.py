"""Analyze: upload chest images and see calibrated probabilities, a heatmap, masks and a downloadable report.

The page lays out `covid_models.analysis.image_analysis.analyse`, the one analysis every page, script and test runs; its
result is cached by the image's content hash with what changes it (model directories, CAM method,
segmentation models), so moving a slider, toggling a mask or changing the display window reruns the script
without recomputing or decoding anything. The window is a display setting only: models get their card's
canonical input. Caches are bounded (2 decoded full-size scans, 128 MB of display-size analyses, 64 windowed
display images as uint8), and batches beyond BATCH_PAGE images are paged, so a long-running server does not
grow without limit and a page never holds more than its caches keep.
Models are used under their lock (pages.shared.model_lock) because a CAM hook on a shared network must not
see another session's forward pass. The analysis is laid out by `pages.shared.show_analysis`, as on the Review page.

This script is the page's flow; its parts are the modules beside it: `pages.analyze_inputs` (uploads, examples,
the batch's pages), `pages.analyze_settings` (the sidebar), `pages.analyze_compute` (the cached model work) and
`pages.analyze_layout` (one image's result).
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from covid_models import RESEARCH_USE_NOTICE
from pages.analyze_inputs import batch_page, examples_section, uploads
from pages.analyze_layout import show_upload
from pages.analyze_settings import settings_sidebar
from pages.shared import enter_through_app

enter_through_app()

st.title("Analyze chest images")
st.warning(RESEARCH_USE_NOTICE, icon=":material/health_and_safety:")
settings = settings_sidebar()
items = uploads()
examples_section(settings.default_modality)
if st.session_state.get("examples") and st.button("Remove the example images", icon=":material/delete:"):
    st.session_state["examples"] = []
    st.rerun()
if not items:
    st.info("Upload one or more images to analyse them.", icon=":material/upload:")
    st.stop()
summary_slot = st.container()
shown_items = batch_page(items)
rows = [show_upload(item, settings) for item in shown_items]
if len(shown_items) > 1:
    with summary_slot:
        st.markdown(f"**{len(shown_items)} images**; details of each below.")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
            "COVID-19 probability": st.column_config.NumberColumn(format="percent")})
