"""Timeline figure: files written, treatment lines and new lesions drawn."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np

from metstrack.io.figures import plot_timeline
from metstrack.tracking.tracker import track_patient


def test_timeline_png_and_svg(tk, tmp_path):
    a = tk.ball((8, 8, 8), 3)
    b = tk.ball((22, 22, 22), 2)
    res = track_patient([tk.mask(a), tk.mask(a, b), tk.mask(b)], [0, 60, 120])
    paths = plot_timeline(res.trajectories, tmp_path / "P1", treatment_days=[30.0])
    assert [p.name for p in paths] == ["P1.png", "P1.svg"]
    img = mpimg.imread(paths[0])
    assert img.shape[0] > 100 and img.shape[1] > 100
    # the new lesion is drawn in matplotlib's tab:red, treatment as a dashed line
    red = np.array([0xD6, 0x27, 0x28]) / 255.0
    assert (np.abs(img[..., :3] - red).sum(axis=-1) < 0.05).sum() > 20
    svg = paths[1].read_text()
    assert "radiosurgery" in svg and "L2" in svg
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_timeline_of_patient_without_lesions(tmp_path):
    import pandas as pd

    from metstrack.tracking.trajectory import TRAJECTORY_COLUMNS

    empty = pd.DataFrame(columns=list(TRAJECTORY_COLUMNS))
    paths = plot_timeline(empty, tmp_path / "P0.png", formats=("png",))
    assert paths == [tmp_path / "P0.png"] and paths[0].stat().st_size > 0
