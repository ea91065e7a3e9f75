"""``crrelu-lightning eafo --derive``: check values, table file, histogram input, plot."""
import json

import numpy as np
import pytest

from crrelu_lightning.eafo_cli import main


def test_derive_json_gelu_check_values(capsys, tmp_path):
    table = tmp_path / "gelu.npz"
    assert main(["--base", "gelu", "--derive", "--format", "json", "--eps", "0.5", "--table", str(table)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["d_entropy_d_eps_raw"] == pytest.approx(-0.659, abs=5e-4)
    assert out["eps_interval_raw"] == pytest.approx([-6.66, 0.310], abs=5e-3)
    assert out["branch"][1] is None  # +inf is null in JSON
    rec = out["records"][0]
    assert rec["monotone"] and rec["delta_entropy"] == pytest.approx(-0.125, abs=5e-4)  # ε̂ = 0.5 ⇔ raw 0.155
    data = np.load(table)
    assert data["x"].shape == data["h"].shape == data["dh"].shape == (1025,)
    assert data["eps_interval"][1] == pytest.approx(1.0, abs=1e-6)


def test_derive_from_a_histogram_file_and_plot(capsys, tmp_path):
    rng = np.random.default_rng(1)
    counts, edges = np.histogram(0.5 * rng.standard_normal(200_000) + 0.1, bins=120, range=(-3, 3))
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"counts": counts.tolist(), "edges": edges.tolist()}))
    png = tmp_path / "p.png"
    assert main(["--base", "silu", "--derive", "--input", f"histogram:{path}", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "smoothed histogram" in out and "dH_B/deps(0) = -" in out
    assert png.stat().st_size > 10_000


def test_derive_unknown_base_is_a_clean_error(capsys):
    with pytest.raises(SystemExit):
        main(["--base", "nope", "--derive"])
    assert "Registered" in capsys.readouterr().err
