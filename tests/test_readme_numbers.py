"""The README's results table says what the bundled files record.

Each agent figure (real return mean and std, seeds, imagined return, gap) must equal the
`"evaluation"` in the bundled agent's `agent.json`, and each frame count the data sets in the
bundled model's `config.json`, so that neither can change without the other.
"""

import json
import re
from pathlib import Path

from keycld_gym import SYSTEMS
from keycld_gym.agents import bundled_recipe

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
WEIGHTS = ROOT / "keycld_gym" / "weights"
REGIME = {"task": "the task's own reset"}  # how the table names each data regime


def results_table(text: str) -> dict[str, dict[str, str]]:
    """The rows of the README's results table (the one whose first column is `system`), by system."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| system | real frames"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header), f"README results row has {len(cells)} cells, the header {len(header)}: {line}"
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def _column(row: dict[str, str], prefix: str) -> str:
    (name,) = [k for k in row if k.startswith(prefix)]
    return row[name]


def _number(text: str) -> float:
    return float(text.replace(",", "").replace("%", ""))


def mismatches(text: str) -> list[str]:
    """Every figure of the README's results table that the bundled records do not say, as messages."""
    rows = results_table(text)
    bad = [] if set(rows) == set(SYSTEMS) else [f"results table rows {sorted(rows)}, systems {sorted(SYSTEMS)}"]
    for system, row in rows.items():
        if system not in SYSTEMS:
            continue
        # the model: real frames of its keypoint and dynamics data sets, and their regime
        config = json.loads((WEIGHTS / system / "config.json").read_text())
        sets = [config["data"]] + ([config["keypoints_from"]["data"]] if "keypoints_from" in config else [])
        frames_cell = _column(row, "real frames")
        frames, _, regime = frames_cell.partition(", ")
        if _number(frames) != sum(s["frames"] for s in sets):
            bad.append(f"{system}: README {frames} real frames, config.json {' + '.join(str(s['frames']) for s in sets)}")
        regimes = {REGIME.get(s["regime"], s["regime"]) for s in sets}
        if regimes != {regime}:
            bad.append(f"{system}: README regime {regime!r}, config.json {sorted(regimes)}")

        # the bundled keypoint agent and its recorded evaluation
        algo, obs = (c.strip().lower() for c in _column(row, "bundled agent").split(","))
        recipe = bundled_recipe(system, obs)
        if recipe is None or recipe.algo != algo:
            bad.append(f"{system}: README's agent {algo}/{obs} is not the bundled recipe's")
            continue
        agent = json.loads((WEIGHTS / f"{system}-{algo}-{obs}" / "agent.json").read_text())
        ev = agent["evaluation"]
        if ev["model_real_frames"] != sum(s["frames"] for s in sets):
            bad.append(f"{system}: agent.json's model learned from {ev['model_real_frames']} frames, config.json's other")
        mean, std = (_number(x) for x in _column(row, "real return").split("±"))
        seeds = f"{ev['seed']}-{ev['seed'] + ev['episodes'] - 1}"
        expected = {
            "real return mean": (mean, round(ev["real_return_mean"], 1)),
            "real return std": (std, round(ev["real_return_std"], 1)),
            "imagined return": (_number(_column(row, "imagined return")), round(ev["imagined_return_mean"], 1)),
            "gap (%)": (_number(_column(row, "gap")), round(100 * ev["gap"], 1)),
            "episodes": (10, ev["episodes"]),
        }
        bad += [f"{system}: README {what} {readme}, agent.json {recorded}"
                for what, (readme, recorded) in expected.items() if readme != recorded]
        if _column(row, "seeds") != seeds:
            bad.append(f"{system}: README seeds {_column(row, 'seeds')}, agent.json {seeds}")
        if not re.fullmatch(r"[+-]\d+\.\d%", _column(row, "gap")):
            bad.append(f"{system}: the gap {_column(row, 'gap')!r} is not a signed percentage")
    return bad


def test_the_readme_results_table_is_what_the_bundled_files_record():
    assert not mismatches(README.read_text()), "\n".join(mismatches(README.read_text()))


def test_a_changed_number_fails_the_check():
    text = README.read_text()
    row = results_table(text)["cartpole"]
    real = _column(row, "real return")
    changed = text.replace(f"| {real} |", f"| {_number(real.split('±')[0]) + 1:.1f} ± {real.split('±')[1].strip()} |", 1)
    assert changed != text and any("real return mean" in m for m in mismatches(changed))
    frames = _column(row, "real frames")
    changed = text.replace(f"| cartpole | {frames} |", "| cartpole | 44,000, the task's own reset |", 1)
    assert changed != text and any("real frames" in m for m in mismatches(changed))
