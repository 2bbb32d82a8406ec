"""Videos a person can watch: prediction videos (`keycld-gym video`) and labelled panels.

A prediction video shows held-out real sequences as ground truth | KeyCLD | each compared
model, side by side. Every model estimates the state from the same real start window (the
evaluation's, `WINDOWS.evaluation_start`) and predicts open loop under the recorded
actions; a frame per agent step. Keypoints are drawn (the first model's encoding on the real
frames, each model's prediction on its own), every panel has a label and the time since the
prediction started, and a prediction's panel turns red from the step where its error to the
real frame first exceeds the VPT threshold (the evaluation's epsilon), so the valid
prediction time can be read off the video.

    keycld-gym video --checkpoint pendulum --compare runs/ode/model --data runs/pendulum/data/task-eval --out pend.gif
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from keycld_gym.analysis.calibration import ensemble_predictions
from keycld_gym.analysis.evaluation import (
    frame_mse,
    held_out_sequences,
    mse_epsilon,
    predict_open_loop,
    render_states,
    valid_prediction_time,
)
from keycld_gym.envs.imagined_env import KEYPOINT_COLOURS, upscale_with_keypoints
from keycld_gym.model.checkpoint import load_model
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.sim.systems import WINDOWS

VIDEO_SUFFIXES = (".gif", ".mp4")
BAR = 18  # px: the label bar above and the caption bar below each panel
VALID, INVALID, TEXT = (40, 140, 60), (200, 40, 40), (30, 30, 30)
# pixels of an ensemble's disagreement that fill a panel's bar (a keypoint's size in a 64-pixel frame)
SPREAD_FULL_SCALE = 4.0
# the model kinds' names in a video's labels
KIND_LABELS = {"constrained": "KeyCLD", "unconstrained": "unconstrained", "neural_ode": "neural ODE"}


def _font(size: int = 13):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def annotate(frame: np.ndarray, keypoints: np.ndarray | None, scale: int, title: str, caption: str,
             caption_colour: tuple[int, int, int] = TEXT, border: tuple[int, int, int] | None = None,
             meter: float | None = None) -> np.ndarray:
    """One panel: `frame` `(H, W, 3)` enlarged `scale` times with keypoints `(K, 2)`, a title bar above, a caption below.

    `border` draws a 3-pixel frame of that colour around the image (a failed prediction);
    `meter` in [0, 1] a bar along the image's bottom edge, that share of its width (an
    ensemble's disagreement: the model saying how unsure it is).
    """
    from PIL import Image, ImageDraw

    image = upscale_with_keypoints(frame, keypoints, scale)
    if border is not None:
        image[:3], image[-3:], image[:, :3], image[:, -3:] = border, border, border, border
    h, w = image.shape[:2]
    panel = Image.new("RGB", (w, h + 2 * BAR), (255, 255, 255))
    panel.paste(Image.fromarray(image), (0, BAR))
    draw = ImageDraw.Draw(panel)
    font = _font()
    draw.text((4, 2), title, fill=TEXT, font=font)
    draw.text((4, h + BAR + 2), caption, fill=caption_colour, font=font)
    if meter is not None:
        share = float(np.clip(meter, 0.0, 1.0))
        draw.rectangle((0, BAR + h - 6, w - 1, BAR + h - 1), fill=(230, 230, 230))
        draw.rectangle((0, BAR + h - 6, int(round(share * (w - 1))), BAR + h - 1), fill=INVALID)
    return np.asarray(panel)


def side_by_side_frames(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels `(H, W_i, 3)` of equal height joined left to right with white gaps: `(H, sum W_i + gaps, 3)`."""
    white = np.full((panels[0].shape[0], gap, 3), 255, np.uint8)
    parts = [panels[0]]
    for p in panels[1:]:
        parts += [white, p]
    return np.concatenate(parts, 1)


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Write frames uint8 `(T, H, W, 3)` as a GIF (looping) or an MP4 (H.264), chosen by the suffix of `path`."""
    import imageio.v3 as iio

    path = Path(path)
    if path.suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"cannot write a video to {path}: the file name must end in one of {VIDEO_SUFFIXES}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        _write_gif(path, frames, fps)
    else:
        # H.264 wants both sides a multiple of 16: pad with white rather than rescale
        t, h, w, _ = frames.shape
        padded = np.full((t, -(-h // 16) * 16, -(-w // 16) * 16, 3), 255, np.uint8)
        padded[:, :h, :w] = frames
        iio.imwrite(path, padded, fps=fps, codec="libx264")  # imageio picks its video plugin
    return path


def _write_gif(path: Path, frames: np.ndarray, fps: float, colours: int = 32) -> None:
    """One small palette for every frame, so that the rendered textures do not make the file huge.

    The palette is the frames' main colours plus the keypoints' and the captions' colours,
    which a plain quantisation drops (they cover few pixels).
    """
    from PIL import Image

    fixed = [*KEYPOINT_COLOURS.tolist(), (255, 255, 255), TEXT, VALID, INVALID]
    mosaic = Image.fromarray(np.concatenate(list(frames[:: max(1, len(frames) // 16)]), 0))
    main = mosaic.quantize(colors=colours - len(fixed), method=Image.Quantize.FASTOCTREE).getpalette()
    palette = Image.new("P", (1, 1))
    palette.putpalette(main[: 3 * (colours - len(fixed))] + [c for rgb in fixed for c in rgb])
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    # GIF frame times are whole hundredths of a second
    images[0].save(path, save_all=True, append_images=images[1:], duration=10 * max(1, round(100 / fps)), loop=0,
                   optimize=True)


@dataclass
class Prediction:
    """One model's open-loop prediction of the chosen sequences, at the agent interval."""

    label: str
    frames: np.ndarray  # (S, N + 1, H, W, 3) uint8: the fitted start state, then N agent steps
    keypoints: np.ndarray  # (S, N + 1, K, 2)
    valid_steps: np.ndarray  # (S,): predicted agent steps before the error first exceeds epsilon
    spread: np.ndarray | None = None  # (S, N + 1): the ensemble's disagreement in pixels (None: no ensemble)


def predict_sequences(model: KeyCLDModel, frames: np.ndarray, actions: np.ndarray, start_frames: int,
                      agent_steps: int, epsilon: float, label: str) -> Prediction:
    """A model's prediction of real sequences frames uint8 `(S, T, H, W, 3)` under actions `(S, T, A)`."""
    repeat = model.spec.action_repeat
    _, qs_fit, vs_fit, pred = predict_open_loop(model, frames, actions, start_frames, agent_steps * repeat)
    q = torch.cat([qs_fit[:, -1:], pred[:, repeat - 1::repeat]], 1)  # (S, N + 1, K, 2)
    rendered = render_states(model, q.flatten(0, 1)).reshape(*q.shape[:2], *frames.shape[2:])
    real = frames[:, start_frames - 1::repeat][:, :agent_steps + 1]
    errors = frame_mse(rendered[:, 1:], real[:, 1:].astype(np.float32) / 255)
    spread = None
    if model.ensemble is not None:
        act = torch.from_numpy(np.asarray(actions, np.float32))[:, start_frames - 1:]
        members = ensemble_predictions(model, qs_fit[:, -1], vs_fit[:, -1], act, [repeat * (i + 1) for i in range(agent_steps)])
        spread = np.concatenate([np.zeros((len(q), 1), np.float32), model.ensemble.disagreement(members).numpy()], 1)
    return Prediction(label, (rendered * 255).round().clip(0, 255).astype(np.uint8), q.numpy(),
                      valid_prediction_time(errors, epsilon), spread)


def model_label(model: KeyCLDModel) -> str:
    """A model's name in a video: KeyCLD or the ablation its dynamics kind is."""
    return KIND_LABELS.get(model.config.dynamics.kind, model.config.dynamics.kind)


def prediction_video(checkpoint: str | Path, data: str | Path, out: str | Path, *,
                     compare: Sequence[str | Path] = (), labels: Sequence[str] | None = None,
                     sequences: int | Sequence[int] = 3, agent_steps: int | None = None, scale: int = 3) -> dict:
    """Write ground truth | `checkpoint` | each of `compare` on held-out sequences of `data` to `out` (.gif or .mp4).

    sequences: how many held-out sequences (the first ones), or their indices among the
    held-out sequences. agent_steps: the prediction's length (default: as long as the
    sequences allow). Returns what the video shows: the sequences and each panel's valid
    prediction time in agent steps.
    """
    if Path(out).suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"--out {out}: the file name must end in one of {VIDEO_SUFFIXES}")
    models = [load_model(c) for c in (checkpoint, *compare)]
    spec = models[0].spec
    size = (spec.camera.height, spec.camera.width)
    for c, m in zip(compare, models[1:]):
        if m.spec.name != spec.name or (m.spec.camera.height, m.spec.camera.width) != size:
            raise ValueError(f"{c} is a {m.spec.name} model of {m.spec.camera.height}x{m.spec.camera.width} frames; "
                             f"{checkpoint} is {spec.name} of {size[0]}x{size[1]}: compare models of one system and "
                             "frame size")
    if labels is None:
        labels = [model_label(m) for m in models]
        if len(set(labels)) < len(labels):  # two models of one kind: number them in order
            labels = [f"{lab} {i + 1}" for i, lab in enumerate(labels)]
    if len(labels) != len(models) or len(set(labels)) < len(labels):
        raise ValueError(f"labels {list(labels)} for {len(models)} models: give one distinct label per model")
    d, split = held_out_sequences(models[0], data)
    count = len(d["frames"])
    index = list(range(min(sequences, count))) if isinstance(sequences, int) else list(sequences)
    if not index or max(index) >= count or min(index) < 0:
        raise ValueError(f"{data} has {count} held-out sequences ({split}); asked for {sequences}")
    frames, actions = d["frames"][index], d["actions"][index].astype(np.float32)
    start = spec.frames(WINDOWS.evaluation_start)
    repeat = spec.action_repeat
    longest = (frames.shape[1] - start) // repeat
    agent_steps = longest if agent_steps is None else agent_steps
    if not 1 <= agent_steps <= longest:
        raise ValueError(f"sequences of {frames.shape[1]} frames allow 1 to {longest} agent steps after the "
                         f"{start}-frame start window, not {agent_steps}")
    epsilon = mse_epsilon(d["frames"][:, ::10].reshape(-1, *frames.shape[2:]))
    predictions = [predict_sequences(m, frames, actions, start, agent_steps, epsilon, lab) for m, lab in zip(models, labels)]
    truth = frames[:, start - 1::repeat][:, :agent_steps + 1]
    with torch.no_grad():
        truth_kp = models[0].encode_frames(truth.reshape(-1, *truth.shape[2:])).numpy().reshape(*truth.shape[:2], -1, 2)
    video = []
    for s, seq in enumerate(index):
        for t in range(agent_steps + 1):
            clock = f"t = {t * spec.agent_dt:.2f} s"
            panels = [annotate(truth[s, t], truth_kp[s, t], scale, f"ground truth #{seq}", clock)]
            for p in predictions:
                valid = t <= p.valid_steps[s]
                caption = clock if valid else f"invalid after {p.valid_steps[s] * spec.agent_dt:.2f} s"
                meter = None
                if p.spread is not None:  # the bar fills at SPREAD_FULL_SCALE pixels of disagreement
                    caption += f", members ±{p.spread[s, t]:.1f} px"
                    meter = p.spread[s, t] / SPREAD_FULL_SCALE
                panels.append(annotate(p.frames[s, t], p.keypoints[s, t], scale, p.label, caption,
                                       TEXT if valid else INVALID, None if valid else INVALID, meter))
            video.append(side_by_side_frames(panels))
    write_video(out, np.stack(video), fps=1 / spec.agent_dt)
    return {
        "out": str(out), "system": spec.name, "data": str(data), "split": split, "sequences": index,
        "start_frames": start, "agent_steps": agent_steps, "agent_interval_s": spec.agent_dt, "epsilon": epsilon,
        "valid_steps": {p.label: p.valid_steps.tolist() for p in predictions},
        "disagreement_px": {p.label: p.spread.round(3).tolist() for p in predictions if p.spread is not None},
        "frame_size": list(video[0].shape[:2]), "frames": len(video),
    }
