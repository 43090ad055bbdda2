"""Hub access that fails fast: a local HTTP server on 127.0.0.1 as HF_ENDPOINT answers 401 (gated) or 404
(misspelled), a closed port answers nothing, and HF_HUB_OFFLINE=1 with an empty cache: each is one `error:`
line, exit 2, within 10 s, naming the `hf` command that fixes it (never the retired `huggingface-cli`), for
model.name and for data.source alike, before any data is prepared."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from tests.conftest import free_port, run_cli

BOUND_S = 10


class Hub(http.server.BaseHTTPRequestHandler):
    status = 404

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "refused by the test hub"}')

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_answering():
    servers = []

    def start(status: int) -> str:
        handler = type("Answer", (Hub,), {"status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()


def train(setting: str, env: dict):
    started = time.monotonic()
    res = run_cli("train", "recipes/tiny-cpu.yaml", "--set", setting, "--set", "output.dir=/nonexistent-never-made",
                  env=env, timeout=120)
    return res, time.monotonic() - started


SETTINGS = {"model": "model.name=org/some-model", "dataset": "data.source=org/some-data"}


def one_line(res) -> str:
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "huggingface-cli" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("kind", SETTINGS)
def test_gated_names_hf_auth_login(kind, hub_answering):
    res, took = train(SETTINGS[kind], {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub_answering(401)})
    line = one_line(res)
    assert "401" in line and "`hf auth login`" in line and "HF_TOKEN" in line and took < BOUND_S, (line, took)


@pytest.mark.parametrize("kind", SETTINGS)
def test_missing_says_so(kind, hub_answering):
    res, took = train(SETTINGS[kind], {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub_answering(404)})
    line = one_line(res)
    assert "does not exist on the hub" in line and took < BOUND_S, (line, took)


@pytest.mark.parametrize("kind", SETTINGS)
def test_unreachable_names_both_ways_in(kind):
    res, took = train(SETTINGS[kind], {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    line = one_line(res)
    assert "cannot be reached" in line and "`hf download org/some-" in line and "HF_HOME" in line, line
    assert took < BOUND_S, took


@pytest.mark.parametrize("kind", SETTINGS)
def test_offline_with_nothing_cached_names_both_ways_in(kind):
    res, took = train(SETTINGS[kind], {"HF_HUB_OFFLINE": "1"})
    line = one_line(res)
    assert "HF_HUB_OFFLINE=1" in line and "`hf download org/some-" in line and took < BOUND_S, (line, took)
    assert ("--repo-type dataset" in line) == (kind == "dataset")


def cached_model(home, repo_id: str) -> dict:
    """A hub cache of its own (HF_HOME=home) holding `repo_id` at main, as `hf download` leaves it."""
    commit = "1" * 40
    folder = home / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}"
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / "config.json").write_text("{}")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return {"HF_HOME": str(home / "hf")}


def test_a_typo_of_a_cached_model_gets_a_did_you_mean(hub_answering, tmp_path):
    res, _ = train("model.name=Qwen/Qwen3-0.6b", {**cached_model(tmp_path, "Qwen/Qwen3-0.6B"), "HF_HUB_OFFLINE": "0",
                                                  "HF_ENDPOINT": hub_answering(404)})
    assert "did you mean 'Qwen/Qwen3-0.6B'" in one_line(res)


def test_push_to_hub_offline_is_refused_before_training():
    res, took = train("training.push_to_hub=true", {"HF_HUB_OFFLINE": "1"})
    line = one_line(res)
    assert "push_to_hub" in line and "hf upload" in line and took < BOUND_S, line


def test_push_to_hub_without_a_token_is_refused_before_training(hub_answering, tmp_path):
    res, _ = train("training.push_to_hub=true", {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub_answering(200),
                                                 "HF_TOKEN": "", "HF_TOKEN_PATH": str(tmp_path / "no-token")})
    line = one_line(res)
    assert "no hub token" in line and "`hf auth login`" in line, line


@pytest.mark.parametrize("command", [["data"], ["launch", "--num_processes", "2", "train"]])
def test_data_and_launch_check_the_hub_first(command):
    """`medsft data` and the `medsft launch` launcher (once, before any worker) say the same one line."""
    res = run_cli(*command, "recipes/tiny-cpu.yaml", "--set", "data.source=org/some-data", env={"HF_HUB_OFFLINE": "1"},
                  timeout=120)
    line = one_line(res)
    assert "`hf download org/some-data --repo-type dataset`" in line, line


def test_a_revision_written_into_the_id_is_refused_before_anything_loads():
    res, took = train("model.name=Qwen/Qwen3-0.6B@main", {"HF_HUB_OFFLINE": "1"})
    line = one_line(res)
    assert "neither a local path nor a hub id" in line and "model.revision" in line and took < BOUND_S, line


def test_offline_with_another_revision_cached_names_the_revision(tmp_path):
    res = run_cli("train", "recipes/tiny-cpu.yaml", "--set", "model.name=org/cached-model", "--set",
                  "model.revision=v2", env={**cached_model(tmp_path, "org/cached-model"), "HF_HUB_OFFLINE": "1"},
                  timeout=120)
    line = one_line(res)
    assert "at revision v2" in line and "`hf download org/cached-model --revision v2`" in line, line


def test_after_the_hub_failed_to_answer_the_reason_is_not_the_users_switch(hub_answering, tmp_path):
    """A cached model and a hub answering 500: medsft reads the cache offline; the push check that follows says
    the hub did not answer, not that the user turned it off."""
    res = run_cli("train", "recipes/tiny-cpu.yaml", "--set", "model.name=org/cached", "--set",
                  "training.push_to_hub=true", env={**cached_model(tmp_path, "org/cached"), "HF_HUB_OFFLINE": "0",
                                                    "HF_ENDPOINT": hub_answering(500)}, timeout=120)
    line = one_line(res)
    assert "push_to_hub is on but the hub did not answer (500)" in line and "HF_HUB_OFFLINE" not in line, line
