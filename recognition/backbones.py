"""Which backbone embeds the crops: the shipped AlexNet, another AlexNet checkpoint, or ``dlib-resnet``.

:func:`load_backbone` returns a :class:`BackboneChoice`: the network with the
template its crops are made for and the key that names it in feature cache
files. torch is imported only when an AlexNet is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facealign.alignment import Template, get_template

from .digests import file_digest

if TYPE_CHECKING:
    from .backbone import Backbone

__all__ = [
    "BACKBONE_NAMES",
    "DEFAULT_TEMPLATE",
    "BackboneChoice",
    "default_backbone_path",
    "load_backbone",
]

#: Template of every AlexNet crop (rescaled to the backbone input side).
DEFAULT_TEMPLATE = "loose"

#: Named backbones accepted by :func:`load_backbone` besides an AlexNet weights file.
BACKBONE_NAMES: tuple[str, ...] = ("dlib-resnet",)


def default_backbone_path() -> Path:
    """The shipped backbone weights, ``recognition/weights/alexnet.pt``."""
    return Path(__file__).resolve().parent / "weights" / "alexnet.pt"


@dataclass(frozen=True)
class BackboneChoice:
    """A loaded backbone with what the pipeline needs to know about it.

    Attributes
    ----------
    name : str
        ``"alexnet"`` or a name of :data:`BACKBONE_NAMES`.
    network : Backbone
        The feature extractor.
    path : pathlib.Path
        Its weights file.
    template : Template
        The alignment template of its crops, at its input side.
    key : str
        Identifies it in feature cache names (name and weights hash).
    """

    name: str
    network: Backbone
    path: Path
    template: Template
    key: str

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for reports."""
        return {
            "name": self.name,
            "path": str(self.path),
            "sha1": file_digest(self.path),
            "template": self.template.name,
            "input_size": self.network.input_size,
        }


def load_backbone(spec: str | Path | None = None, batch_size: int = 64) -> BackboneChoice:
    """Load a backbone: the shipped AlexNet by default, an AlexNet weights file, or ``"dlib-resnet"``.

    The AlexNet crops use the :data:`DEFAULT_TEMPLATE` at the network's input
    side; ``dlib-resnet`` crops use dlib's chip layout
    (:func:`recognition.dlib_resnet.dlib_chip_template`, 150 px).

    Raises
    ------
    FileNotFoundError
        If an AlexNet weights file does not exist.
    ImportError
        For ``dlib-resnet`` without the ``face-recognition-models`` package.
    """
    if spec is not None and str(spec) in BACKBONE_NAMES:
        from .dlib_resnet import DlibResNetBackbone

        dlib_net = DlibResNetBackbone()
        return BackboneChoice(
            "dlib-resnet",
            dlib_net,
            dlib_net.model_path,
            dlib_net.template,
            f"dlib-resnet-{file_digest(dlib_net.model_path)}",
        )
    from .backbone import AlexNetBackbone

    path = Path(spec) if spec is not None else default_backbone_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"no backbone weights at {path}; train one with 'recognition train', "
            f"pass an AlexNet weights file or one of {list(BACKBONE_NAMES)} to --backbone"
        )
    net = AlexNetBackbone.load(path, batch_size=batch_size)
    # The shipped AlexNet's cache key stays the bare weights hash (feature caches of earlier runs stay valid).
    return BackboneChoice("alexnet", net, path, get_template(DEFAULT_TEMPLATE, net.input_size), file_digest(path))
