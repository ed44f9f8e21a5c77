"""Intensities of every tissue and lesion compartment per contrast (:class:`ContrastTable`).

Two modes:

- ``clinical`` (default): the relative intensities of real scans (T1 white matter =
  1): on T1 pre grey matter darker than white matter and CSF dark; on T1 post
  (CT1) the same plus enhancing vessels, sinuses, choroid plexus, dura and the
  solid part of metastases; on T2 fluid bright; on FLAIR fluid dark and oedema
  bright. Each patient's table is jittered by a few percent.
- ``randomized``: domain randomisation in the manner of SynthSeg (Billot et al.,
  Medical Image Analysis 2023): every tissue and compartment gets a random
  intensity per contrast, so a model trained on it must learn shape rather than
  one contrast. One constraint keeps the task defined: on CT1 the enhancing
  compartments (solid tumour, vessels, sinuses, choroid plexus, dura) stay
  brighter than the parenchyma, because enhancement is what defines a
  metastasis on T1 post. Per study, a random gamma, bias strength, noise level
  and blur are drawn too (:class:`StudyAppearance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metstrack.types import MODALITIES

#: Contrast modes.
CONTRAST_MODES = ("clinical", "randomized")

# Tissue codes (shared with metstrack.synth.anatomy).
BACKGROUND, SCALP, BONE, MARROW, CSF, GM, WM, DEEP_GM, VENTRICLE, CHOROID, DURA = range(11)
N_TISSUES = 11

#: Clinical intensity of each tissue per contrast (rows: MODALITIES order; T1 white matter = 1).
CLINICAL_TISSUE = np.array(
    [
        # bg   scalp bone  marrow csf   gm    wm    deepgm vent  choroid dura
        [0.0, 1.05, 0.08, 0.85, 0.22, 0.66, 1.00, 0.78, 0.20, 0.62, 0.30],  # T1
        [0.0, 1.10, 0.08, 0.92, 0.25, 0.74, 1.00, 0.82, 0.22, 1.50, 1.05],  # CT1
        [0.0, 0.80, 0.06, 0.55, 1.75, 0.85, 0.58, 0.72, 1.80, 1.00, 0.40],  # T2
        [0.0, 0.85, 0.06, 0.55, 0.12, 0.90, 0.66, 0.85, 0.10, 0.75, 0.35],  # FLAIR
    ],
    dtype=np.float32,
)
#: Clinical texture amplitude (relative std) per tissue.
CLINICAL_TEXTURE = np.array(
    [0.0, 0.06, 0.05, 0.08, 0.02, 0.035, 0.025, 0.03, 0.02, 0.08, 0.05], dtype=np.float32
)
#: Clinical intensities of lesion compartments and vessels (MODALITIES order).
CLINICAL_SOLID = np.array([0.62, 1.60, 0.95, 1.05], dtype=np.float32)
CLINICAL_NECROSIS = np.array([0.35, 0.36, 1.40, 0.80], dtype=np.float32)
CLINICAL_CYST = np.array([0.25, 0.27, 1.75, 0.35], dtype=np.float32)
CLINICAL_OEDEMA = np.array([0.62, 0.62, 1.30, 1.35], dtype=np.float32)
CLINICAL_ARTERY = np.array([0.75, 1.70, 0.22, 0.40], dtype=np.float32)
CLINICAL_SINUS = np.array([0.70, 1.80, 0.50, 0.50], dtype=np.float32)

_CT1 = MODALITIES.index("CT1")


@dataclass(frozen=True, eq=False)
class ContrastTable:
    """Intensity of every tissue and compartment per contrast for one patient.

    Every array is float32 with rows (or entries) in
    :data:`~metstrack.types.MODALITIES` order, in units of clinical T1 white matter.

    Attributes:
        tissue: (4, N_TISSUES) tissues by code (see :mod:`metstrack.synth.anatomy`).
        texture: (N_TISSUES,) relative std of each tissue's smooth texture.
        solid: (4,) enhancing solid tumour.
        necrosis: (4,) necrotic core.
        cyst: (4,) cystic core.
        oedema: (4,) vasogenic oedema.
        artery: (4,) arteries and veins.
        sinus: (4,) dural venous sinuses.
    """

    tissue: np.ndarray
    texture: np.ndarray
    solid: np.ndarray
    necrosis: np.ndarray
    cyst: np.ndarray
    oedema: np.ndarray
    artery: np.ndarray
    sinus: np.ndarray


@dataclass(frozen=True)
class StudyAppearance:
    """Per-study acquisition appearance.

    Attributes:
        gamma: (4,) gamma exponent per contrast on intensities normalised to their
            99th percentile (1 = unchanged).
        bias_strength: Amplitude of the log bias field (0.1 clinical).
        noise_std: Rician noise std relative to T1 white matter.
        blur_sigma_vox: Extra Gaussian blur (voxels of the rendering grid).
    """

    gamma: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    bias_strength: float = 0.1
    noise_std: float = 0.025
    blur_sigma_vox: float = 0.0


def clinical_table(rng: np.random.Generator) -> ContrastTable:
    """The clinical table with a per-patient jitter of about 4% per entry."""

    def jit(a: np.ndarray) -> np.ndarray:
        return (a * rng.uniform(0.96, 1.04, a.shape)).astype(np.float32)

    return ContrastTable(
        tissue=jit(CLINICAL_TISSUE),
        texture=CLINICAL_TEXTURE.copy(),
        solid=jit(CLINICAL_SOLID),
        necrosis=jit(CLINICAL_NECROSIS),
        cyst=jit(CLINICAL_CYST),
        oedema=jit(CLINICAL_OEDEMA),
        artery=jit(CLINICAL_ARTERY),
        sinus=jit(CLINICAL_SINUS),
    )


def randomized_table(rng: np.random.Generator) -> ContrastTable:
    """A SynthSeg-style random table (see the module docstring)."""
    n_mod = len(MODALITIES)
    tissue = rng.uniform(0.05, 1.3, (n_mod, N_TISSUES)).astype(np.float32)
    tissue[:, BACKGROUND] = 0.0
    texture = rng.uniform(0.01, 0.08, N_TISSUES).astype(np.float32)
    texture[BACKGROUND] = 0.0

    def rand4() -> np.ndarray:
        return rng.uniform(0.05, 1.6, n_mod).astype(np.float32)

    solid, artery, sinus = rand4(), rand4(), rand4()
    # Enhancement on CT1 stays above the brightest parenchyma.
    ref = float(max(tissue[_CT1, GM], tissue[_CT1, WM], tissue[_CT1, DEEP_GM]))
    for arr in (solid, artery, sinus):
        arr[_CT1] = ref * rng.uniform(1.3, 2.0)
    tissue[_CT1, CHOROID] = ref * rng.uniform(1.2, 1.8)
    tissue[_CT1, DURA] = ref * rng.uniform(1.0, 1.5)
    necrosis, cyst, oedema = rand4(), rand4(), rand4()
    # Necrotic and cystic cores do not enhance.
    necrosis[_CT1] = min(necrosis[_CT1], 0.8 * ref)
    cyst[_CT1] = min(cyst[_CT1], 0.8 * ref)
    return ContrastTable(
        tissue=tissue,
        texture=texture,
        solid=solid,
        necrosis=necrosis,
        cyst=cyst,
        oedema=oedema,
        artery=artery,
        sinus=sinus,
    )


def draw_table(rng: np.random.Generator, mode: str) -> ContrastTable:
    """The table of one patient for ``mode`` (``clinical`` or ``randomized``)."""
    if mode == "clinical":
        return clinical_table(rng)
    if mode == "randomized":
        return randomized_table(rng)
    raise ValueError(f"contrast mode must be one of {CONTRAST_MODES}, found {mode!r}")


def draw_appearance(rng: np.random.Generator, mode: str) -> StudyAppearance:
    """Per-study appearance: fixed for ``clinical``, random for ``randomized``."""
    if mode == "clinical":
        return StudyAppearance()
    g = tuple(float(v) for v in np.exp(rng.normal(0.0, 0.25, len(MODALITIES))))
    return StudyAppearance(
        gamma=g,  # type: ignore[arg-type]
        bias_strength=float(rng.uniform(0.0, 0.35)),
        noise_std=float(rng.uniform(0.01, 0.06)),
        blur_sigma_vox=float(rng.choice([0.0, rng.uniform(0.3, 1.0)])),
    )
