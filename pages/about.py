"""About: what the tool does, for whom, on which data (with licences and citations), and which models ship."""
from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from covid_models import RESEARCH_USE_NOTICE, __version__
from covid_models.models.model_card import ModelCard
from covid_models.models.trust import within_source
from pages.shared import enter_through_app, model_cards, weights_dir

enter_through_app()

# Facts of the curated dataset's sources (shared/data/README.md), written here so the page needs no data folder.
SOURCES = pd.DataFrame([
    {"Source": "ieee8023 COVID-19 Image Data Collection",
     "Used for": "X-ray: COVID-19, pneumonia and some normal frontal films",
     "Licence": "Per image (CC BY-NC-SA 4.0, CC BY 4.0, Apache 2.0, ...); some images state none",
     "Cite": "Cohen JP, Morrison P, Dao L, Roth K, Duong TQ, Ghassemi M. COVID-19 Image Data Collection: "
             "Prospective Predictions Are the Future. arXiv:2006.11988 (2020)"},
    {"Source": "NIH ChestX-ray8 (via muhammedtalo/COVID-19)",
     "Used for": "X-ray: normal (No finding) and pneumonia films",
     "Licence": "NIH Clinical Center: public, no restrictions on use; acknowledge the NIH Clinical Center",
     "Cite": "Wang X, et al. ChestX-ray8. CVPR 2017. Ozturk T, Talo M, et al. Automated detection of COVID-19 "
             "cases using deep neural networks with X-ray images. Comput Biol Med 121:103792 (2020)"},
    {"Source": "UCSD-AI4H COVID-CT",
     "Used for": "CT: COVID-19 and non-COVID slices, official train/val/test split",
     "Licence": "Not stated; COVID slices come from preprints, non-COVID from PubMed Central, MedPix, LUNA "
                "and other websites",
     "Cite": "Zhao J, Zhang Y, He X, Xie P. COVID-CT-Dataset: a CT scan dataset about COVID-19. "
             "arXiv:2003.13865 (2020)"},
    {"Source": "V7 Labs COVID-19 X-ray lung masks (on ieee8023 images)",
     "Used for": "X-ray lung segmentation",
     "Licence": "Masks CC BY 4.0; the images keep their ieee8023 licence",
     "Cite": "V7 Labs COVID-19 X-ray dataset (github.com/v7labs/covid-19-xray-dataset), with the ieee8023 "
             "citation"},
    {"Source": "COVID-SemiSeg / Inf-Net (MedSeg / SIRM CT slices)",
     "Used for": "CT infection segmentation",
     "Licence": "Non-commercial use only",
     "Cite": "Fan D-P, et al. Inf-Net: Automatic COVID-19 Lung Infection Segmentation from CT Images. "
             "IEEE TMI 39(8):2626-2637 (2020)"},
])


SEGMENTATION_OUTPUTS = {"lungs": "lung masks", "infection": "infection (GGO, consolidation) masks"}


def _test_score(card: ModelCard) -> str:
    """The card's headline held-out metric: AUC with its CI for classifiers, mean Dice for segmenters
    (on the test split, or pooled over cross-validation folds when the set was too small to hold one out)."""
    test = card.metrics.get("test") or {}
    auc = test.get("auc")
    if isinstance(auc, (int, float)) and not math.isnan(auc):
        ci = test.get("auc_ci95") or []
        interval = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if len(ci) == 2 and None not in ci else ""
        return f"AUC {auc:.3f}{interval}"
    cross_validation = card.metrics.get("cross_validation") or {}
    if "dice" in test:
        block, where = test, "test"
    else:
        block, where = cross_validation.get("pooled") or {}, f"{cross_validation.get('k', '?')}-fold cross-validation"
    dice = block.get("dice")
    if isinstance(dice, dict) and isinstance(dice.get("mean"), (int, float)):
        interval = f", 95% CI {dice['ci95_low']:.3f}-{dice['ci95_high']:.3f}" if "ci95_low" in dice else ""
        return f"mean Dice {dice['mean']:.3f} ({where}{interval})"
    return "not recorded"


def _models_table() -> pd.DataFrame:
    rows = []
    for _directory, card in model_cards():
        what = f"{card.positive_class} vs rest ({', '.join(card.classes)})" if card.task == "classification" \
            else SEGMENTATION_OUTPUTS.get(card.classes[0], f"{card.classes[0]} masks")
        rows.append({"Model": card.name, "Task": card.task, "Modality": "CT" if card.modality == "ct" else "X-ray",
                     "Architecture": card.architecture, "Output": what, "Test result": _test_score(card),
                     "Within source": "n/a" if card.task != "classification"
                     else "; ".join(within_source(card)) or "none recorded"})
    return pd.DataFrame(rows)


st.title("About this tool")
st.warning(RESEARCH_USE_NOTICE, icon=":material/health_and_safety:")
st.markdown(
    """
This dashboard screens chest **X-ray** and **CT** images for signs of COVID-19 with convolutional networks.
For each image it shows the calibrated class probabilities, the COVID-19 probability against the model's
operating point (and how that point was chosen), a class-activation heatmap showing which regions drove the
prediction, lung (X-ray) or infection (CT) masks, and how much of the heatmap falls inside the lungs.
Images that do not look like the training data are flagged and their prediction is held back.

**Intended use.** Research and teaching: exploring how such models behave, where they look and where they
fail, and collecting radiologists' verdicts on their output in review sessions. It is **not** a medical
device, has not been clinically validated, and must not be used for diagnosis, triage or treatment decisions.

**Known limits.** The public COVID-19 image collections are small and confounded by source: most COVID-19
images come from publications and websites, most normal images from one hospital archive. A model can tell
the classes apart by their source rather than by disease; the *Model performance* page reports results per
source for that reason. Uploaded images are analysed in memory and not stored; review sessions store a
checksum and the file name of each image, never its pixels or patient identifiers.
"""
)

st.header("Data sources")
st.caption("Licences vary from image to image; several are non-commercial or unstated. "
           "Cite the sources below when you publish results obtained with these models.")
st.table(SOURCES.set_index("Source"))  # a static table wraps the long licence and citation texts

st.header("Shipped models")
models = _models_table()
if models.empty:
    st.info(f"No model directories were found in {weights_dir()}. Train models with scripts/train.py or set "
            "COVID_WEIGHTS_DIR to a folder of model directories.", icon=":material/info:")
else:
    st.table(models.set_index("Model"))
    st.caption("Results come from each model's card: the held-out test split, or cross-validation where a set was "
               "too small to hold images out; 95% intervals by bootstrap. The pooled test AUC mixes sources that can "
               "be told apart by their look; the within-source AUC is the one to read (per-source table on Model "
               "performance). Each model directory also holds a MODEL_CARD.md with its data, metrics and limits.")

st.caption(f"covid_models {__version__}")
