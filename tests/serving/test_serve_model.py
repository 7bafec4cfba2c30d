"""`distkg serve --model`: a model folder from `distkg export --format hf` served without its dataset. Its own
module: Ray Serve's HTTP port is fixed when Serve first starts in a process, so it must not run beside
tests/serving/test_serve.py's module-wide server."""

from __future__ import annotations

from distkg.serving.predict import load_predictor, parse_query
from tests.serving.test_serve import QUERY, free_port, post



def test_a_model_folder_is_served_without_its_dataset(yago_run, tmp_path, monkeypatch):
    """`distkg serve --model`: the folder of `distkg export --format hf`, no data root (the replica reads none)."""
    from distkg.serving.pretrained import export_hf
    from distkg.serving.serve import start, stop

    folder = export_hf(yago_run, tmp_path / "hf")
    want = load_predictor(yago_run).predict([parse_query(QUERY)], k=5)[0]
    monkeypatch.setenv("DISTKG_DATA", str(tmp_path / "no-data-here"))
    port = free_port()
    started = start(folder, "127.0.0.1", port, [], max_batch=4, batch_wait_s=0.01, num_cpus=2)
    try:
        status, res = post(f"http://127.0.0.1:{port}/", {"query": QUERY, "top": 5})
    finally:
        stop(started)
    assert status == 200 and [a["entity"] for a in res["answers"]] == [a["entity"] for a in want["answers"]]
