"""The Analyze page's sidebar: the default modality, the model (or ensemble) per modality with its headline and
within-source AUC, the heatmap method and the display settings; what every image of the page is analysed with.
"""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from covid_models.analysis.explain import METHOD_LABELS, METHODS
from covid_models.models.discovery import ensemble_members
from covid_models.models.model_card import MODALITY_NAMES, ModelCard, display_name, is_adapted
from covid_models.models.trust import headline_auc, single_source, within_source
from pages.shared import OPACITY, model_cards

ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class Settings:
    default_modality: str
    models: dict[str, tuple[str, ...]]  # modality -> model directories (several = ensemble)
    method: str
    opacity: float
    show_masks: bool
    outline_on_heatmap: bool


def model_label(directory: str, cards: dict[str, ModelCard], members: dict[str, ModelCard]) -> str:
    return f"Ensemble of all {len(members)} models" if directory == ENSEMBLE else display_name(cards[directory])


def model_caption(model_dirs: tuple[str, ...], cards: dict[str, ModelCard]) -> str:
    """The chosen model's test AUC from its card with its within-source figure beside it (the sidebar is too
    narrow to put them in the option)."""
    if len(model_dirs) > 1:
        return "Mean of the members' calibrated probabilities."
    card = cards[model_dirs[0]]
    if is_adapted(card):
        test = card.metrics.get("test") or {}
        ci = test.get("auc_ci95") or [float("nan")] * 2
        return (f"A head adapted to {card.extra.get('adapted_to')} on {card.extra['base_model'].get('name')}: "
                f"cross-validated AUC {test.get('auc', float('nan')):.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}) on "
                f"{test.get('n', '?')} images of that site, a figure for that site only. Details on Model performance.")
    if (source := single_source(card)) is not None:
        return headline_auc(card) + (f" All test images come from one source ({source}): the AUC is a within-source "
                                     "figure and says nothing of images from other hospitals or scanners. Details "
                                     "on Model performance.")
    within = within_source(card)
    return headline_auc(card) + " " + (
        f"Within-source AUC, {'; '.join(within)}: the number to read, as pooled sources can be told apart by "
        "where the images come from." if within else "No within-source AUC recorded: the headline may measure "
        "the images' source, not the disease.") + " Details on Model performance."


def ensemble_caption(name: str, count: int) -> str | None:
    """Why no ensemble is offered, when it is not: an ensemble needs two models of one modality."""
    if count > 1:
        return None
    return (f"Ensemble: not available for {name}, because only one {name} classifier is installed; an ensemble "
            "averages two or more models of one modality.")


def settings_sidebar() -> Settings:
    with st.sidebar:
        st.subheader("Analysis settings")
        default_modality = st.radio(
            "Modality of images without a DICOM Modality tag", list(MODALITY_NAMES), format_func=MODALITY_NAMES.get,
            horizontal=True, key="modality",
            help="PNG, JPEG and TIFF files do not say what they show; DICOM files do, and their tag wins.")
        models: dict[str, tuple[str, ...]] = {}
        for modality, name in MODALITY_NAMES.items():
            cards = dict(model_cards(task="classification", modality=modality))
            if not cards:
                st.caption(f"No {name} classifier is installed.")
                continue
            members = ensemble_members(cards)
            options = list(cards) + ([ENSEMBLE] if len(members) > 1 else [])
            choice = st.selectbox(f"{name} model", options, key=f"model-{modality}",
                                  format_func=lambda d, c=cards, m=members: model_label(d, c, m))
            models[modality] = tuple(members) if choice == ENSEMBLE else (choice,)
            st.caption(model_caption(models[modality], cards))
            if (why := ensemble_caption(name, len(members))) is not None:
                st.caption(why)
        method = st.selectbox("Heatmap method", METHODS, format_func=METHOD_LABELS.get, key="method",
                              help="Class activation map for the COVID-19 class. Methods marked slow run one "
                                   "forward pass per feature channel.")
        opacity = st.slider("Heatmap opacity", 0.0, 1.0, OPACITY, 0.05, key="opacity")
        show_masks = st.toggle("Show segmentation masks", value=True, key="show-masks")
        outline = st.toggle("Outline the mask on the heatmap", value=True, key="outline")
    return Settings(default_modality, models, method, opacity, show_masks, outline)
