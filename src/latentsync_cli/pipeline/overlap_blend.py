"""Window overlap: each window's lead frames cross-faded with the previous window's last frames.

With `window_overlap` = o, window k (k > 0) is made from o more frames than its
own: the previous window's last o frames come first (WindowInput.lead). Both
windows then have faces for those frames; the output takes

    face = (1 - w) * previous window's face + w * this window's face,   w = (i + 1) / (o + 1)

for the i-th of the o frames, so the mouth moves from one window's drawing to
the next over o frames instead of jumping at the border. The blend reads only
the two windows' own faces, which depend only on (seed, window index, frames):
a resumed or sharded job, whose windows come from the work dir, blends them the
same way and gives the same video.
"""

from __future__ import annotations

import numpy as np
import torch

from latentsync_cli.pipeline.windows import WindowInput, WindowOutput


class OverlapBlend:
    """Holds each window until the next one arrives, blends their shared frames, and drops the lead frames."""

    def __init__(self) -> None:
        self.held: WindowOutput | None = None

    def push(self, output: WindowOutput) -> list[WindowOutput]:
        """The windows ready to go on (in order) once `output`, the next window in order, has arrived."""
        ready = []
        if self.held is not None:
            follows = self.held.window.index == output.window.index - 1
            ready.append(cross_fade(self.held, output) if follows and output.window.lead else self.held)
        self.held = without_lead(output)
        return ready

    def flush(self) -> list[WindowOutput]:
        ready = [self.held] if self.held is not None else []
        self.held = None
        return ready


def lead_face_count(window: WindowInput) -> int:
    return int(window.has_face[: window.lead].sum())


def cross_fade(previous: WindowOutput, following: WindowOutput) -> WindowOutput:
    """`previous` (already without its own lead) with its last faces blended into `following`'s lead faces."""
    window = following.window
    shared = lead_face_count(window)
    if shared == 0:
        return previous
    positions = np.flatnonzero(window.has_face[: window.lead])  # where in the lead the faces are
    weights = torch.from_numpy((positions + 1) / (window.lead + 1)).float()[:, None, None, None]
    faces = previous.wait()
    new_faces = following.wait()[:shared].float()
    weights = weights.to(new_faces.device)
    blended = (1.0 - weights) * faces[-shared:].float() + weights * new_faces
    return WindowOutput(previous.window, torch.cat([faces[:-shared], blended.to(faces.dtype)]))


def without_lead(output: WindowOutput) -> WindowOutput:
    """The window's own frames and faces only."""
    window = output.window
    if window.lead == 0:
        return output
    skip_faces = lead_face_count(window)
    own = WindowInput(
        index=window.index,
        first_frame=window.first_frame + window.lead,
        frames=window.frames[window.lead :],
        has_face=window.has_face[window.lead :],
        faces=window.faces[skip_faces:],
        affines=window.affines[skip_faces:],
    )
    return WindowOutput(own, output.wait()[skip_faces:])
