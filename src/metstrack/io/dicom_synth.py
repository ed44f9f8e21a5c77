"""Write small, real DICOM series and RTSTRUCTs with plain pydicom.

Used by the tests, the documentation's worked examples and demos. Kept
independent of metstrack's reader (:mod:`metstrack.io.dicom`): positions and
orientations are set from explicit direction vectors, so tests can compute
the affine a correct reader must produce on their own.

The default patient name, ID and birth date are obviously fake marker values
(:data:`SECRET_NAME`...) that tests search for in messages and logs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from metstrack.core.affine import spacing_array_mm
from metstrack.io.nifti import read_volume
from metstrack.types import Volume

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"

#: Patient-identifying values the tests look for in messages and logs.
SECRET_NAME = "Doe^Jane"
SECRET_ID = "MRN-7733-SECRET"
SECRET_BIRTH = "19450317"


def _base(path: Path, sop_class: str, modality: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    return ds


def write_series(
    folder: Path,
    array_xyz: np.ndarray,
    *,
    row_dir: Sequence[float] = (1, 0, 0),
    col_dir: Sequence[float] = (0, 1, 0),
    origin_lps: Sequence[float] = (-20.0, -30.0, 10.0),
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    step_mm: float = 2.0,
    positions_mm: Sequence[float] | None = None,
    description: str = "T1 MPRAGE",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_uid: str | None = None,
    patient_id: str = SECRET_ID,
    patient_name: str = SECRET_NAME,
    study_date: str = "20200101",
    contrast_agent: str | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    shuffle_seed: int | None = 0,
    series_number: int = 1,
) -> list[Path]:
    """Write an (X=column, Y=row, Z=slice) array as single-frame MR slices.

    Slice k lies at ``origin + normal * positions_mm[k]`` (default ``k * step_mm``),
    with ``normal = row_dir x col_dir``. File names are shuffled when
    ``shuffle_seed`` is given, so the reader must sort by position.
    ``pixel_spacing`` is DICOM's (row spacing, column spacing).

    Returns:
        The written paths in slice order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    r = np.asarray(row_dir, float)
    r /= np.linalg.norm(r)
    c = np.asarray(col_dir, float)
    c /= np.linalg.norm(c)
    n = np.cross(r, c)
    nx, ny, nz = array_xyz.shape
    pos = [k * step_mm for k in range(nz)] if positions_mm is None else list(positions_mm)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    names = [f"IM{k:04d}.dcm" for k in range(len(pos))]
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(names)
    paths = []
    for k, d in enumerate(pos):
        path = folder / names[k]
        ds = _base(path, MR_IMAGE_STORAGE, "MR")
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = SECRET_BIRTH
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyDate = study_date
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = description
        if contrast_agent:
            ds.ContrastBolusAgent = contrast_agent
        ds.ImageOrientationPatient = [float(v) for v in (*r, *c)]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin_lps) + n * d]
        ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
        ds.SliceThickness = float(step_mm)
        ds.Rows = ny
        ds.Columns = nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        sl = array_xyz[:, :, min(k, nz - 1)].T.astype(np.uint16)  # (rows, columns)
        ds.PixelData = np.ascontiguousarray(sl).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced_series(
    path: Path,
    array_xyz: np.ndarray,
    *,
    row_dir: Sequence[float] = (1, 0, 0),
    col_dir: Sequence[float] = (0, 1, 0),
    origin_lps: Sequence[float] = (-20.0, -30.0, 10.0),
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    step_mm: float = 2.0,
    frame_order: Sequence[int] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    description: str = "T1 MPRAGE",
) -> Path:
    """Write an (X, Y, Z) array as one enhanced (multi-frame) MR file.

    Geometry as :func:`write_series`; orientation and spacing in the shared
    functional groups, positions and rescale per frame. ``frame_order`` lists
    the slice stored in each frame (default in order).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    r = np.asarray(row_dir, float) / np.linalg.norm(row_dir)
    c = np.asarray(col_dir, float) / np.linalg.norm(col_dir)
    n = np.cross(r, c)
    nx, ny, nz = array_xyz.shape
    order = list(range(nz)) if frame_order is None else list(frame_order)
    ds = _base(path, ENHANCED_MR_STORAGE, "MR")
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.SeriesDescription = description
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = ny, nx
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    shared = pydicom.Dataset()
    meas = pydicom.Dataset()
    meas.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
    meas.SliceThickness = float(step_mm)
    ori = pydicom.Dataset()
    ori.ImageOrientationPatient = [float(v) for v in (*r, *c)]
    shared.PixelMeasuresSequence = DSequence([meas])
    shared.PlaneOrientationSequence = DSequence([ori])
    ds.SharedFunctionalGroupsSequence = DSequence([shared])
    frames = []
    for k in order:
        pf = pydicom.Dataset()
        pos = pydicom.Dataset()
        pos.ImagePositionPatient = [float(v) for v in np.asarray(origin_lps) + n * k * step_mm]
        pf.PlanePositionSequence = DSequence([pos])
        tr = pydicom.Dataset()
        tr.RescaleSlope = slope
        tr.RescaleIntercept = intercept
        tr.RescaleType = "US"
        pf.PixelValueTransformationSequence = DSequence([tr])
        frames.append(pf)
    ds.PerFrameFunctionalGroupsSequence = DSequence(frames)
    data = np.stack([array_xyz[:, :, k].T for k in order]).astype(np.uint16)
    ds.PixelData = np.ascontiguousarray(data).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_rtstruct(
    path: Path,
    series_paths: Sequence[Path],
    rois: Sequence[tuple[str, str, list[np.ndarray]]],
    *,
    series_uid: str | None = None,
) -> Path:
    """Write an RTSTRUCT with ROIs ``(name, interpreted_type, [contour (N,3) LPS mm, ...])``.

    ``series_uid`` overrides the referenced series (to simulate an absent one).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    ref = pydicom.dcmread(series_paths[0], stop_before_pixels=True)
    ds = _base(path, RTSTRUCT_STORAGE, "RTSTRUCT")
    for key in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate"):
        setattr(ds, key, getattr(ref, key))
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = ref.FrameOfReferenceUID
    ds.StructureSetLabel = "test"
    contour_images = []
    for p in series_paths:
        h = pydicom.dcmread(p, stop_before_pixels=True)
        it = pydicom.Dataset()
        it.ReferencedSOPClassUID = h.SOPClassUID
        it.ReferencedSOPInstanceUID = h.SOPInstanceUID
        contour_images.append(it)
    rser = pydicom.Dataset()
    rser.SeriesInstanceUID = series_uid or ref.SeriesInstanceUID
    rser.ContourImageSequence = DSequence(contour_images)
    rstudy = pydicom.Dataset()
    rstudy.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    rstudy.ReferencedSOPInstanceUID = ref.StudyInstanceUID
    rstudy.RTReferencedSeriesSequence = DSequence([rser])
    rfor = pydicom.Dataset()
    rfor.FrameOfReferenceUID = ref.FrameOfReferenceUID
    rfor.RTReferencedStudySequence = DSequence([rstudy])
    ds.ReferencedFrameOfReferenceSequence = DSequence([rfor])
    ss, rc, obs = [], [], []
    for i, (name, kind, contours) in enumerate(rois, start=1):
        a = pydicom.Dataset()
        a.ROINumber = i
        a.ReferencedFrameOfReferenceUID = ref.FrameOfReferenceUID
        a.ROIName = name
        ss.append(a)
        b = pydicom.Dataset()
        b.ReferencedROINumber = i
        b.ROIDisplayColor = [255, 0, 0]
        items = []
        for pts in contours:
            c = pydicom.Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [float(v) for v in np.asarray(pts).ravel()]
            items.append(c)
        b.ContourSequence = DSequence(items)
        rc.append(b)
        o = pydicom.Dataset()
        o.ObservationNumber = i
        o.ReferencedROINumber = i
        o.RTROIInterpretedType = kind
        o.ROIInterpreter = ""
        obs.append(o)
    ds.StructureSetROISequence = DSequence(ss)
    ds.ROIContourSequence = DSequence(rc)
    ds.RTROIObservationsSequence = DSequence(obs)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_demo_export(root: Path, *, seed: int = 0) -> Path:
    """Write a tiny hospital-style export: one patient, two studies, an RTSTRUCT.

    Layout: ``root/patient1/study{1,2}/<series>/IM*.dcm`` with series T1, T1 post
    (contrast agent set), T2, FLAIR and, in study 1, a planning T1 post with an
    RTSTRUCT holding two GTV circle stacks and a brainstem. 16x16x8 voxels,
    1 x 1 x 2 mm. The patient values are the fake markers of this module.

    Args:
        root: Folder to create.
        seed: Seed of the random image texture.

    Returns:
        ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    img = rng.integers(50, 400, size=(16, 16, 8)).astype(np.uint16)
    origin = np.array([-8.0, -8.0, 0.0])
    for s, date in ((1, "20210104"), (2, "20210405")):
        common = dict(study_uid=generate_uid(), study_date=date, origin_lps=origin)
        base = root / "patient1" / f"study{s}"
        write_series(base / "t1", img, description="AX T1 MPRAGE", series_number=1, **common)
        write_series(
            base / "t1post",
            img,
            description="AX T1 MPRAGE",
            contrast_agent="Gadobutrol",
            series_number=2,
            **common,
        )
        write_series(base / "t2", img, description="AX T2 FSE", series_number=3, **common)
        write_series(base / "flair", img, description="AX T2 FLAIR", series_number=4, **common)
        if s == 1:
            plan = write_series(
                base / "planning", img, description="Stealth T1 post", series_number=5, **common
            )
            t = np.linspace(0, 2 * np.pi, 90, endpoint=False)

            def ring(k: int, cx: float, cy: float, r: float, t: np.ndarray = t) -> np.ndarray:
                return np.column_stack(
                    [
                        origin[0] + cx + r * np.cos(t),
                        origin[1] + cy + r * np.sin(t),
                        np.full_like(t, origin[2] + 2.0 * k),
                    ]
                )

            write_rtstruct(
                base / "rtstruct" / "RS.dcm",
                plan,
                [
                    ("GTV_1", "GTV", [ring(k, 4.5, 5.0, 2.5) for k in (2, 3, 4)]),
                    ("GTV_2", "GTV", [ring(k, 11.0, 10.0, 1.6) for k in (5, 6)]),
                    ("Brainstem", "ORGAN", [ring(k, 8.0, 12.0, 2.0) for k in (1, 2)]),
                ],
            )
    return root


def write_volume_series(folder: Path, volume: Volume, *, description: str, **kwargs) -> list[Path]:
    """Write a RAS+ :class:`~metstrack.types.Volume` as a single-frame MR series.

    The affine's axes become the DICOM row, column and slice directions (LPS);
    intensities are stored as uint16 with RescaleSlope/RescaleIntercept so a
    reader gets the float values back to within one quantum.

    Args:
        folder: Folder to write ``IM*.dcm`` into.
        volume: (X, Y, Z) image on a grid whose slice axis is orthogonal to its
            first two axes.
        description: SeriesDescription.
        **kwargs: Passed to :func:`write_series` (study_uid, study_date, patient_id, ...).

    Returns:
        The written paths in slice order.
    """
    aff = np.asarray(volume.affine, dtype=np.float64)
    flip = np.array([-1.0, -1.0, 1.0])
    sp = spacing_array_mm(aff)
    row = flip * aff[:3, 0] / sp[0]
    col = flip * aff[:3, 1] / sp[1]
    normal = np.cross(row, col)
    sdir = flip * aff[:3, 2] / sp[2]
    sign = float(np.sign(sdir @ normal))
    if abs(abs(sdir @ normal) - 1.0) > 1e-6:
        raise ValueError("the slice axis must be orthogonal to the in-plane axes")
    arr = np.asarray(volume.array, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.round((arr - lo) / slope).astype(np.uint16)
    nz = arr.shape[2]
    return write_series(
        Path(folder),
        stored,
        row_dir=row,
        col_dir=col,
        origin_lps=flip * aff[:3, 3],
        pixel_spacing=(float(sp[1]), float(sp[0])),
        step_mm=float(sp[2]),
        positions_mm=[sign * k * float(sp[2]) for k in range(nz)],
        description=description,
        slope=slope,
        intercept=lo,
        **kwargs,
    )


#: Series written per release sequence by :func:`write_release_as_dicom`.
RELEASE_SERIES = {
    "T1": ("AX T1 MPRAGE", None, 1),
    "CT1": ("AX T1 MPRAGE", "Gadobutrol", 2),
    "T2": ("AX T2 FSE", None, 3),
    "FLAIR": ("AX T2 FLAIR", None, 4),
}


def write_release_as_dicom(
    release: Path,
    out: Path,
    *,
    patient_id: str = SECRET_ID,
    patient_name: str = SECRET_NAME,
    first_date: str = "20210104",
) -> Path:
    """Write a release-layout dataset's images (T1, CT1, T2, FLAIR) as a DICOM export.

    Every patient of ``release`` becomes one DICOM patient (``patient_id``, with
    the patient's index appended after the first), every study one
    StudyInstanceUID dated ``first_date`` + DaysFromBaselineScan. Layout:
    ``out/patient<i>/study<j>/<seq>/IM*.dcm``.

    Returns:
        ``out``.
    """
    release, out = Path(release), Path(out)
    table = pd.read_csv(
        release / "tables" / "imaging.csv", dtype={"PatientID": str, "StudyID": str}
    )
    start = dt.date(int(first_date[:4]), int(first_date[4:6]), int(first_date[6:]))
    for i, (pid, rows) in enumerate(table.groupby("PatientID", sort=True), start=1):
        ident = patient_id if i == 1 else f"{patient_id}-{i}"
        for j, (_, row) in enumerate(rows.sort_values("DaysFromBaselineScan").iterrows(), start=1):
            date = start + dt.timedelta(days=int(row["DaysFromBaselineScan"]))
            common = dict(
                study_uid=generate_uid(),
                frame_uid=generate_uid(),
                study_date=date.strftime("%Y%m%d"),
                patient_id=ident,
                patient_name=patient_name,
            )
            folder = release / "imaging" / "patientId" / pid / "studyId" / str(row["StudyID"])
            for seq, (desc, agent, number) in RELEASE_SERIES.items():
                f = folder / f"{seq}.nii.gz"
                if not f.exists():
                    continue
                write_volume_series(
                    out / f"patient{i}" / f"study{j}" / seq.lower(),
                    read_volume(f),
                    description=desc,
                    contrast_agent=agent,
                    series_number=number,
                    **common,
                )
    return out
