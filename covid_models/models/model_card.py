"""The model card (card.json): every fact about a model, and the schema a card must satisfy to be used.

A model folder may come from anywhere (a colleague's training run, a download), and every page and script
reads its card, so a card is checked against a schema with types and bounds before it is used: a string
temperature, a null data block, a threshold "high" or an input size that would need tens of GB are refused
here, with the field and the reason, instead of failing later on a page. Reading and writing the files is
`checkpoint.py`'s job; the Markdown version for people is `card_markdown.py`'s.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any

from covid_models.imaging.preprocessing import Preprocessing

FORMAT_VERSION = 1
TASKS = ("classification", "segmentation")
MODALITY_NAMES = {"xray": "X-ray", "ct": "CT"}  # the modalities a card may name, as people write them
MODALITIES = tuple(MODALITY_NAMES)
REQUIRED = ("name", "task", "modality", "architecture", "classes", "preprocessing")
IMAGE_SIZE_RANGE = (16, 1024)  # network input side in pixels: 1024 already needs about 1 GB per CAM
CHANNELS = (1, 3)
MAX_TEMPERATURE = 100.0
MAX_CLASSES = 64
MAX_TEXT = 500  # characters of a name, an architecture, a class
MAX_DEPTH = 32  # nesting of JSON objects and lists in a card (real cards use 5)
# An architecture is a registry key (checked against the registries when a card is read); a name is shown and may
# end up in file names and selectors, so it holds no path separator, no "..", no control character.
_ARCHITECTURE = re.compile(r"[a-z][a-z0-9_]*")
_NOT_IN_A_NAME = re.compile(r"[/\\\x00-\x1f\x7f]|\.\.")


class CardError(ValueError):
    """A card that does not satisfy the schema; the message names the field and what is wrong."""


def modality_name(modality: str) -> str:
    """"ct" -> "CT", "xray" -> "X-ray" (an unknown name is returned as it is)."""
    return MODALITY_NAMES.get(modality, modality)


def is_adapted(card: ModelCard) -> bool:
    """Whether the card is a head adapted to a local site on a pinned base model (`covid_models.local.adaptation`)."""
    return isinstance(card.extra.get("base_model"), dict)


def display_name(card: ModelCard) -> str:
    """How the pages name a model: "X-ray, adapted to <site>" for an adapted head, else its name."""
    if is_adapted(card):
        return f"{modality_name(card.modality)}, adapted to {card.extra.get('adapted_to', 'a local site')}"
    return card.name


@dataclass
class ModelCard:
    """Everything needed to use and judge a model; serialised as card.json."""

    name: str
    task: str
    modality: str
    architecture: str
    classes: list[str]
    preprocessing: Preprocessing
    positive_class: str | None = None
    temperature: float = 1.0
    operating_points: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_operating_point: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def threshold(self) -> float:
        """Probability of the positive class at or above which a case is called positive."""
        if self.default_operating_point is None:
            return 0.5
        return float(self.operating_points[self.default_operating_point]["threshold"])

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["preprocessing"] = self.preprocessing.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ModelCard:
        """A card from parsed card.json, checked against the schema first (CardError names what is wrong)."""
        check_card(data)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and k != "preprocessing"},
                   preprocessing=Preprocessing.from_dict(data["preprocessing"]))

    def validate(self) -> None:
        """Check a card built in code (by training) against the same schema as one read from a file."""
        check_card(self.to_dict())


# ------------------------------------------------------------------------------------------------ schema
def _describe(value: Any) -> str:
    kind = {bool: "a boolean", str: "a string", int: "an integer", float: "a number", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
    shown = repr(value) if isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 40 else ""
    return f"{kind} {shown}".strip()


def _number(value: Any, where: str, low: float, high: float, *, low_open: bool = False) -> float:
    """A JSON number (not a boolean, not a string) within [low, high] ((low, high] when `low_open`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CardError(f"{where} must be a number, not {_describe(value)}")
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise CardError(f"{where} must lie in {bounds}, not {value!r}")
    return float(value)


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise CardError(f"{where} must be an integer, not {_describe(value)}")
    if not low <= value <= high:
        raise CardError(f"{where} must lie in [{low}, {high}], not {value}")
    return value


def _text(value: Any, where: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise CardError(f"{where} must be a non-empty text of at most {MAX_TEXT} characters, not {_describe(value)}")
    if choices is not None and value not in choices:
        raise CardError(f"{where} {value!r} is not one of {', '.join(choices)}")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CardError(f"{where} must be an object, not {_describe(value)}")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of JSON objects and lists, without recursion (a hostile card may nest thousands deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check_preprocessing(value: Any) -> None:
    block = _object(value, "preprocessing")
    for key in ("image_size", "channels", "mean", "std"):
        if key not in block:
            raise CardError(f"preprocessing lacks {key}")
    _integer(block["image_size"], "preprocessing.image_size", *IMAGE_SIZE_RANGE)
    channels = block["channels"]
    if isinstance(channels, bool) or channels not in CHANNELS:
        raise CardError(f"preprocessing.channels must be one of {CHANNELS}, not {_describe(channels)}")
    for key, low in (("mean", -10.0), ("std", 0.0)):
        values = block[key]
        if not isinstance(values, (list, tuple)) or len(values) != channels:
            raise CardError(f"preprocessing.{key} must be a list of {channels} numbers, not {_describe(values)}")
        for index, item in enumerate(values):
            _number(item, f"preprocessing.{key}[{index}]", low, 10.0, low_open=key == "std")
    window = block.get("hu_window")
    if window is not None:
        if not isinstance(window, (list, tuple)) or len(window) != 2:
            raise CardError(f"preprocessing.hu_window must be null or [centre, width], not {_describe(window)}")
        _number(window[0], "preprocessing.hu_window centre", -2000.0, 4000.0)
        _number(window[1], "preprocessing.hu_window width", 0.0, 6000.0, low_open=True)
    crop = block.get("lung_crop")
    if crop is not None:
        _number(crop, "preprocessing.lung_crop", 0.0, 1.0)
    segmenter = block.get("lung_segmenter")
    if segmenter is not None:
        if (not isinstance(segmenter, (list, tuple)) or len(segmenter) != 2
                or not all(isinstance(item, str) and item for item in segmenter)):
            raise CardError(f"preprocessing.lung_segmenter must be null or [name, sha256], not {_describe(segmenter)}")
        if crop is None:
            raise CardError("preprocessing.lung_segmenter needs a lung_crop: the segmenter only gives the crop's box")
    if not isinstance(block.get("equalise", False), bool):
        raise CardError(f"preprocessing.equalise must be true or false, not {_describe(block['equalise'])}")
    if crop is not None and window is None and segmenter is None:
        raise CardError("preprocessing.lung_crop needs an hu_window (CT: the box is found on a lung-window slice) "
                        "or a lung_segmenter (X-ray: the box of its mask)")


def model_name(value: Any) -> str:
    """`value` if it may name a model (a plain label: the training scripts check --name with it before training);
    CardError otherwise."""
    if _NOT_IN_A_NAME.search(_text(value, "name")):
        raise CardError(f"name {value!r} holds a path separator, '..' or a control character: a model name is a "
                        "plain label")
    return value


def check_card(data: Any) -> None:
    """Raise CardError unless `data` (parsed card.json) satisfies the schema: types, bounds, cross-references."""
    card = _object(data, "card.json")
    if _depth(card) > MAX_DEPTH:
        raise CardError(f"card.json nests objects and lists more than {MAX_DEPTH} levels deep")
    version = card.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise CardError(f"card format version {version!r} is not supported (this version of the tool reads "
                        f"{FORMAT_VERSION})")
    missing = [key for key in REQUIRED if key not in card]
    if missing:
        raise CardError(f"card.json lacks the fields: {', '.join(missing)}")
    model_name(card["name"])
    _text(card["task"], "task", TASKS)
    _text(card["modality"], "modality", MODALITIES)
    if not _ARCHITECTURE.fullmatch(_text(card["architecture"], "architecture")):
        raise CardError(f"architecture {card['architecture']!r} is not an architecture name (lower-case letters, "
                        "digits and underscores)")
    classes = card["classes"]
    if not isinstance(classes, (list, tuple)) or not 1 <= len(classes) <= MAX_CLASSES:
        raise CardError(f"classes must be a list of 1 to {MAX_CLASSES} names, not {_describe(classes)}")
    for index, name in enumerate(classes):
        _text(name, f"classes[{index}]")
    if len(set(classes)) != len(classes):
        raise CardError("classes must be distinct")
    _check_preprocessing(card["preprocessing"])
    positive = card.get("positive_class")
    if positive is not None and positive not in classes:
        raise CardError(f"the positive class {positive!r} is not among the classes {classes}")
    _number(card.get("temperature", 1.0), "temperature", 0.0, MAX_TEMPERATURE, low_open=True)
    points = _object(card.get("operating_points", {}), "operating_points")
    for name, point in points.items():
        _object(point, f"operating_points.{name}")
        if "threshold" not in point:
            raise CardError(f"operating_points.{name} lacks its threshold")
        _number(point["threshold"], f"operating_points.{name}.threshold", 0.0, 1.0)
        if "rule" in point and not isinstance(point["rule"], str):
            raise CardError(f"operating_points.{name}.rule must be a text, not {_describe(point['rule'])}")
    default = card.get("default_operating_point")
    if default is not None and (not isinstance(default, str) or default not in points):
        raise CardError(f"default_operating_point {default!r} is not one of the operating points")
    for key in ("metrics", "data", "training", "extra"):
        _object(card.get(key, {}), key)
    ood = card.get("extra", {}).get("ood")
    if ood is not None:
        _number(_object(ood, "extra.ood").get("threshold"), "extra.ood.threshold", -math.inf, math.inf)
    sha = card.get("sha256", "")
    if not isinstance(sha, str) or (sha and not re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise CardError(f"sha256 must be 64 hexadecimal digits, not {_describe(sha)}")
