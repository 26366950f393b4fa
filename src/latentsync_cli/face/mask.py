"""The mouth mask: which part of the aligned face the model regenerates.

Upstream ships the mask as a 256 x 256 PNG. We draw the same shape from its
geometry instead (no image file): the black region (0 = generate) is the lower
face, a band under the eyes with a notch left white around the nose, and a
"U" below that reaches the chin. It is drawn at 256 x 256 and resized like
upstream does (OpenCV Lanczos4 on uint8, then / 255), so the soft edge values
match too.
"""

from __future__ import annotations

import cv2
import numpy as np

MASK_DRAW_SIZE = 256  # the shape is defined on a 256 x 256 grid, then resized

# Rows and columns below are inclusive pixel indices on the 256 grid
# (measured geometry of upstream's mask.png).
BAND_TOP_ROW = 95  # first black row
NOTCH_BOTTOM_ROW = 127  # rows 95-127 keep a white notch around the nose
NOTCH_COLUMNS = (78, 177)
BAND_LEFT_COLUMN = 9
BAND_RIGHT_COLUMN = 247  # the notch rows stop one column short, at 246
TAPER_FIRST_ROW = 128  # rows 128-169: both sides move in by 1 px every 14 rows
CURVE_FIRST_ROW = 170  # from here on, each row's run is listed explicitly

# The lower "U", rows 170-242: (first, last) black column of each row. The
# curve is slightly asymmetric and no simple ellipse reproduces it to the
# pixel, and the 64 x 64 latent mask samples every 8th pixel after resizing,
# so the edges are written out. Measured geometry of upstream's mask.png.
CURVE_ROWS = (
    (12, 243), (13, 243), (13, 242), (14, 242), (14, 241), (15, 241),  # rows 170-175
    (15, 240), (16, 240), (16, 239), (17, 238), (18, 238), (18, 237),  # rows 176-181
    (19, 236), (19, 236), (20, 235), (21, 234), (21, 234), (22, 233),  # rows 182-187
    (22, 232), (23, 232), (24, 231), (25, 230), (26, 230), (26, 229),  # rows 188-193
    (27, 228), (28, 228), (29, 227), (30, 226), (31, 225), (32, 224),  # rows 194-199
    (33, 223), (34, 223), (34, 222), (35, 221), (36, 220), (37, 219),  # rows 200-205
    (38, 218), (39, 217), (40, 216), (42, 215), (43, 214), (44, 213),  # rows 206-211
    (45, 212), (47, 211), (48, 210), (49, 208), (51, 207), (52, 206),  # rows 212-217
    (54, 204), (56, 203), (57, 202), (59, 200), (60, 199), (62, 197),  # rows 218-223
    (64, 196), (66, 194), (68, 192), (70, 191), (72, 189), (74, 187),  # rows 224-229
    (76, 185), (78, 183), (80, 180), (82, 178), (85, 175), (87, 173),  # rows 230-235
    (90, 171), (93, 168), (95, 166), (99, 164), (104, 160), (108, 156),  # rows 236-241
    (131, 152),  # row 242, the last black row: the chin tip sits right of centre
)


def draw_mask_256() -> np.ndarray:
    """The binary mask on the 256 grid: uint8 (256, 256), 255 = keep, 0 = generate."""
    mask = np.full((MASK_DRAW_SIZE, MASK_DRAW_SIZE), 255, dtype=np.uint8)

    notch_left, notch_right = NOTCH_COLUMNS
    for row in range(BAND_TOP_ROW, NOTCH_BOTTOM_ROW + 1):
        mask[row, BAND_LEFT_COLUMN:notch_left] = 0
        mask[row, notch_right + 1 : BAND_RIGHT_COLUMN] = 0

    for row in range(TAPER_FIRST_ROW, CURVE_FIRST_ROW):
        left = BAND_LEFT_COLUMN + (row - TAPER_FIRST_ROW + 6) // 14
        right = BAND_RIGHT_COLUMN - (row - TAPER_FIRST_ROW + 7) // 14
        mask[row, left : right + 1] = 0

    for offset, (left, right) in enumerate(CURVE_ROWS):
        mask[CURVE_FIRST_ROW + offset, left : right + 1] = 0
    return mask


def mouth_mask(resolution: int = 512, feather_px: float = 0) -> np.ndarray:
    """The mask at `resolution`: float32 (R, R), 1 = keep, 0 = generate.

    feather_px > 0 softens the edge with a Gaussian of that sigma (in output
    pixels), for users who see the hard U-shaped seam; 0 is upstream's mask.
    Upstream's model was trained with the hard mask, so feather only the mask
    used to paste the generated face back, not the one the UNet sees.
    """
    if resolution < 8:
        raise ValueError(f"mask resolution must be at least 8, got {resolution}")
    resized = cv2.resize(draw_mask_256(), (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    # Divide in float64 like upstream, so the values round to float32 the same way.
    mask = (resized / 255.0).astype(np.float32)
    if feather_px > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=float(feather_px), borderType=cv2.BORDER_REPLICATE)
        mask = np.clip(mask, 0.0, 1.0)  # the blur's rounding can step just past 1
    return mask


def latent_mask(mask: np.ndarray, latent_size: int) -> np.ndarray:
    """Nearest-neighbour downsample to (latent_size, latent_size), like F.interpolate(mode="nearest").

    For 512 -> 64 this is mask[::8, ::8].
    """
    size = mask.shape[0]
    source_index = (np.arange(latent_size) * size) // latent_size
    return np.ascontiguousarray(mask[np.ix_(source_index, source_index)], dtype=np.float32)
