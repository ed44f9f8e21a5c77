"""NIfTI reading and writing with validation at the boundary.

Every failure raises a typed error from :mod:`metstrack.errors` that names the
file and the problem. Writes are atomic (temporary file, then rename).
Arrays are returned in the file's own voxel order with the file's affine;
reorienting to RAS is an explicit preprocessing step, never done here.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from metstrack.core.affine import spacing_array_mm
from metstrack.core.atomic import atomic_path
from metstrack.errors import (
    GeometryMismatchError,
    ImageReadError,
    InvalidImageError,
    LabelError,
)
from metstrack.types import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    """True when ``path`` ends in ``.nii`` or ``.nii.gz``."""
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def find_nifti(folder: Path, stem: str) -> Path | None:
    """Return ``folder/stem.nii.gz`` or ``folder/stem.nii`` when one exists, else ``None``."""
    for sfx in (".nii.gz", ".nii"):
        p = folder / f"{stem}{sfx}"
        if p.exists():
            return p
    return None


def read_volume(
    path: str | Path,
    *,
    dtype: np.dtype | type | None = np.float32,
    allow_4d_singleton: bool = True,
) -> Volume:
    """Read a 3D NIfTI image and validate it.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        dtype: dtype of the returned array (scaling slope applied); ``None``
            keeps the on-disk dtype without scaling.
        allow_4d_singleton: Accept a 4D image whose last axis has length 1.

    Returns:
        A :class:`~metstrack.types.Volume` with an (X, Y, Z) array and the
        file's voxel-to-world affine.

    Raises:
        ImageReadError: The file is missing, not NIfTI, truncated or corrupt.
        InvalidImageError: Not 3D, NaN/inf voxels, singular affine, zero or
            negative spacing.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a regular file")
    try:
        img = nib.load(str(path))
        if dtype is None:
            arr = np.asanyarray(img.dataobj)
        else:
            arr = np.asarray(img.get_fdata(dtype=np.float64 if dtype == np.float64 else np.float32))
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ImageReadError(f"{path}: truncated or corrupt gzip stream ({exc})") from exc
    except nib.filebasedimages.ImageFileError as exc:
        raise ImageReadError(f"{path}: not a readable NIfTI file ({exc})") from exc
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"{path}: cannot read image data ({exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageReadError(f"{path}: expected a NIfTI image, found {type(img).__name__}")
    if arr.ndim == 4 and allow_4d_singleton and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InvalidImageError(
            f"{path}: expected a 3D image, found {arr.ndim}D with shape {tuple(arr.shape)}"
        )
    if dtype is not None and arr.dtype != np.dtype(dtype):
        arr = arr.astype(dtype)
    zooms = _raw_zooms(path, img)
    if any(z <= 0 for z in zooms):
        raise InvalidImageError(
            f"{path}: zero or negative voxel spacing {zooms} in the header's pixdim; "
            "the header is broken, fix the spacing at the source"
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    validate_affine(affine, path)
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            n = int(bad.sum())
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InvalidImageError(
                f"{path}: {n} voxel(s) are NaN or infinite (first at voxel {idx}); "
                "fix the source image or mask those voxels before use"
            )
    return Volume(array=arr, affine=affine, path=path)


def _raw_zooms(path: Path, img: nib.Nifti1Image) -> tuple[float, float, float]:
    """Spatial pixdim as stored on disk (nibabel silently replaces zeros by 1 on load)."""
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    hdr_cls = type(img.header)
    try:
        with opener(path, "rb") as f:
            raw = hdr_cls.from_fileobj(f, check=False)
        pix = raw["pixdim"][1:4]
    except Exception:  # noqa: BLE001 - the image itself already loaded; fall back to it
        pix = img.header["pixdim"][1:4]
    return (float(pix[0]), float(pix[1]), float(pix[2]))


def validate_affine(affine: np.ndarray, path: str | Path | None = None) -> None:
    """Raise :class:`InvalidImageError` unless ``affine`` is a usable voxel-to-world matrix.

    Args:
        affine: (4, 4) matrix.
        path: File to name in the message.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InvalidImageError(f"{path}: affine must be a finite 4x4 matrix, found {affine!r}")
    spacing = spacing_array_mm(affine)
    if np.any(spacing <= 1e-6):
        raise InvalidImageError(
            f"{path}: zero voxel spacing {tuple(np.round(spacing, 6))} mm in the affine; "
            "the header's pixdim/sform is broken"
        )
    det = np.linalg.det(affine[:3, :3])
    if abs(det) < 1e-9 * float(np.prod(spacing)):
        raise InvalidImageError(f"{path}: singular affine (determinant {det:.3g})")


def read_label(
    path: str | Path,
    *,
    binary: bool = True,
    reference: Volume | None = None,
) -> Volume:
    """Read a lesion mask.

    Args:
        path: NIfTI file holding an integer mask.
        binary: Require values in {0, 1}; with ``False`` any non-negative
            integer labels (instance maps) are accepted.
        reference: When given, the mask must share its grid (shape and affine).

    Returns:
        A Volume whose array is ``uint8`` (binary) or ``int32`` (instances).

    Raises:
        LabelError: Non-integer values (a probability map), negative labels, or
            values other than 0/1 when ``binary``.
        GeometryMismatchError: Grid differs from ``reference``.
    """
    vol = read_volume(path, dtype=np.float32)
    arr = vol.array
    if not np.all(np.equal(np.mod(arr, 1), 0)):
        raise LabelError(
            f"{path}: label holds non-integer values (range {arr.min():.3g}..{arr.max():.3g}); "
            "is it a probability map? threshold it first"
        )
    if arr.min() < 0:
        raise LabelError(f"{path}: label holds negative values (min {arr.min():.0f})")
    if binary:
        values = np.unique(arr)
        extra = [v for v in values.tolist() if v not in (0.0, 1.0)]
        if extra:
            shown = ", ".join(f"{v:g}" for v in extra[:5])
            raise LabelError(
                f"{path}: expected a binary mask (0/1), found value(s) {shown}; "
                "for multi-class labels select the lesion classes first"
            )
        out = arr.astype(np.uint8)
    else:
        out = arr.astype(np.int32)
    lab = Volume(array=out, affine=vol.affine, path=vol.path)
    if reference is not None:
        check_same_grid(reference, lab)
    return lab


def check_same_grid(a: Volume, b: Volume, *, atol_mm: float = 1e-3) -> None:
    """Raise :class:`GeometryMismatchError` naming both files unless they share a grid."""
    if a.same_grid(b, atol_mm=atol_mm):
        return
    da, db = a.describe_grid(), b.describe_grid()
    if da == db:  # same summary: say what differs (direction cosines or shear)
        delta = float(np.abs(np.asarray(a.affine) - np.asarray(b.affine)).max())
        db += f", its affine differing by up to {delta:.3g} (direction)"
    raise GeometryMismatchError(
        f"grids differ: {a.path} has {da}; {b.path} has {db}; "
        "resample one onto the other (metstrack preprocess) before combining them"
    )


def write_volume(
    vol: Volume | np.ndarray,
    path: str | Path,
    *,
    affine: np.ndarray | None = None,
    dtype: np.dtype | type | None = None,
) -> Path:
    """Write a volume to NIfTI atomically.

    Args:
        vol: A Volume, or a bare (X, Y, Z) array with ``affine``.
        path: Target ``.nii`` or ``.nii.gz`` file; parent folders are created.
        affine: Voxel-to-world matrix when ``vol`` is an array.
        dtype: On-disk dtype (default: the array's).

    Returns:
        ``path``.
    """
    if isinstance(vol, Volume):
        arr, aff = vol.array, vol.affine
    else:
        if affine is None:
            raise ValueError("write_volume: an affine is required with a bare array")
        arr, aff = np.asarray(vol), np.asarray(affine, dtype=np.float64)
    if arr.ndim != 3:
        raise InvalidImageError(f"{path}: refusing to write a {arr.ndim}D array as a 3D image")
    validate_affine(aff, path)
    if dtype is not None:
        arr = arr.astype(dtype)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: file name must end in .nii or .nii.gz")
    img = nib.Nifti1Image(arr, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
