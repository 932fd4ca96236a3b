"""``python -m dalle_fast.serve`` on a tiny run trained here for a few steps: the server started as a
user starts it (on 127.0.0.1, a free port) and called with gradio_client (the images, scores and
grid PNG of ``python -m dalle_fast.generate`` for the same settings, messages for bad values and a
run that cannot be opened, the server still up after them); the queue and the progress bar of a
server in this process; the page in a real browser (Debian's chromium through selenium: it fails,
not skips, without them); the screenshot command; and the errors of the command line, also
without gradio."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from stage_runs import one_thread  # noqa: F401 - a fixture: run on one thread

import dalle_fast.sampling as sampling
from dalle_fast.config import preset
from dalle_fast.data import ShapesDataset
from dalle_fast.generate import TextToImage
from dalle_fast.generate import main as generate_main
from dalle_fast.serve import browser, main
from dalle_fast.serve import screenshot as screenshot_command
from dalle_fast.serve.app import build_app, launch
from dalle_fast.serve.studio import Studio
from dalle_fast.train import train

PROMPT = "a small red circle in the top left"
STARTUP_SECONDS = 180  # bounded waits: the server's start (imports torch and gradio), a request
REQUEST_SECONDS = 120


def tiny_config():
    """tiny, 4 steps of each stage on 256 training images."""
    config = preset("tiny")
    steps = {name: dataclasses.replace(getattr(config, name),
                                       optim=dataclasses.replace(getattr(config, name).optim, steps=4))
             for name in ("vae", "transformer", "clip")}
    return dataclasses.replace(config, **steps, data=dataclasses.replace(config.data, train_size=256, val_size=64,
                                                                         test_size=64))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained by python -m dalle_fast.train's code, every stage."""
    run_dir = tmp_path_factory.mktemp("serve") / "run"
    train(tiny_config(), run_dir)
    return run_dir


def wait_until_up(url: str, server: subprocess.Popen | None, log: Path | None = None) -> None:
    """Poll ``url`` until it answers (at most :data:`STARTUP_SECONDS`); fail with the server's
    output when it exits first."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            pytest.fail(f"the server exited with status {server.returncode}:\n{log.read_text() if log else ''}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the server did not answer {url} within {STARTUP_SECONDS} s")


@pytest.fixture(scope="module")
def server(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``python -m dalle_fast.serve --run RUN --port P`` (no --host: the default) on a free port, on
    one thread as this module; yields its URL and log file, and stops it after the module."""
    port = browser.free_port()
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "dalle_fast.serve", "--run", str(run), "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, process, log)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server: tuple[str, Path]) -> Client:
    return Client(server[0], verbose=False)


@pytest.fixture(scope="module")
def prime_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prime") / "prime.png"
    image = ShapesDataset("val", 32)[0][0]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return path


def ask(client: Client, prompt: str = PROMPT, num: object = 5, keep: object = 3, temperature: object = 1.0,
        top_k: object = 16, seed: object = 0, prime: Path | None = None, prime_rows: object = 2) -> tuple:
    """One request to the page's /generate endpoint: (gallery items, grid PNG path, summary)."""
    return client.predict(prompt, num, keep, temperature, top_k, seed, None if prime is None else handle_file(prime),
                          prime_rows, api_name="/generate")


def test_the_server_listens_on_127_0_0_1_by_default(server):
    url, log = server
    assert f"Running on local URL:  {url.rstrip('/')}\n" in log.read_text()


@pytest.mark.parametrize("settings, flags", [
    ({"num": 6, "keep": 3, "temperature": 0.8, "top_k": 12, "seed": 7, "prime_rows": 2},
     ["--num", "6", "--keep", "3", "--temperature", "0.8", "--top-k", "12", "--seed", "7", "--prime-rows", "2"]),
    ({"num": 5, "keep": 2, "temperature": 1.0, "top_k": None, "seed": 1, "prime_rows": 2},
     ["--num", "5", "--keep", "2", "--seed", "1"]),
])
def test_the_page_gives_the_images_and_scores_of_generate(client, run, prime_file, tmp_path, capsys, settings, flags):
    primed = "--prime-rows" in flags  # else the page sends its slider's value without an image
    gallery, grid_png, summary = ask(client, prime=prime_file if primed else None, **settings)
    out = tmp_path / "generate.png"
    assert generate_main(["--run", str(run), "--prompt", PROMPT, "--out", str(out), *flags,
                          *(["--prime", str(prime_file)] if primed else [])]) == 0
    printed = capsys.readouterr().out
    assert Path(grid_png).read_bytes() == out.read_bytes()

    pipeline = TextToImage.from_run(run)
    prime_image = None
    if primed:
        from dalle_fast.data.images import load_image
        prime_image = load_image(prime_file, pipeline.image_size)
    result = pipeline.generate(PROMPT, settings["num"], settings["keep"], temperature=settings["temperature"],
                               top_k=settings["top_k"] or 16,  # 16: the default, 64 codes / 4
                               seed=settings["seed"], prime_image=prime_image,
                               prime_rows=settings["prime_rows"] if primed else 0)
    want = (result.images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert len(gallery) == settings["keep"]
    for rank, (item, image, score) in enumerate(zip(gallery, want, result.scores.tolist()), 1):
        with Image.open(item["image"]) as shown:
            assert shown.format == "PNG" and np.array_equal(np.asarray(shown.convert("RGB")), image)
        assert item["caption"] == f"#{rank}: {score:.4f}"
        assert f"{rank}: {score:.4f}" in printed
    assert result.scores.tolist() == sorted(result.scores.tolist(), reverse=True)
    assert "python -m dalle_fast.generate" in summary and f"--seed {settings['seed']}" in summary


@pytest.mark.parametrize("settings, message", [
    ({"num": 2, "keep": 3}, r"--keep 3: cannot keep more images than --num 2"),
    ({"num": 0}, r"--num: must be an int >= 1, got 0"),
    ({"num": None}, r"--num: the field is empty"),
    ({"temperature": -1.0}, r"--temperature: must be a finite number >= 0"),
    ({"top_k": 0}, r"--top-k: must be an int >= 1"),
    ({"prompt": "  "}, r"--prompt: type a caption"),
    ({"prime_rows": 9, "prime": "PRIME"}, r"9.* greater than maximum value 4"),  # gradio's check of the slider
    ({"prime_rows": 1.5, "prime": "PRIME"}, r"--prime-rows: must be a whole number, got 1.5"),
])
def test_a_bad_value_gives_a_message_and_the_server_keeps_serving(client, prime_file, settings, message):
    settings = {k: prime_file if v == "PRIME" else v for k, v in settings.items()}
    with pytest.raises(AppError, match=message):
        ask(client, **settings)
    assert len(ask(client, num=2, keep=1)[0]) == 1


def test_a_run_that_cannot_be_opened_any_more_gives_a_message(client, run):
    pointer = run / "dalle-latest.json"
    hidden = run / "dalle-latest.json.hidden"
    pointer.rename(hidden)
    try:
        with pytest.raises(AppError, match=r"holds no dalle checkpoint: train that stage first"):
            ask(client)
    finally:
        hidden.rename(pointer)
    assert len(ask(client, num=2, keep=2)[0]) == 2


def test_requests_at_once_are_queued_one_at_a_time_with_a_progress_bar(run, monkeypatch):
    """Three clients at once on a server in this process whose sampling is slowed down: the
    requests run one after the other, each shows the progress of its tokens, and each gets its images."""
    running, overlapped = [], []
    pick = sampling.pick

    def slow_pick(*args, **kwargs):
        running.append(threading.get_ident())
        overlapped.append(len(set(running)) > 1)
        time.sleep(0.03)
        running.remove(threading.get_ident())
        return pick(*args, **kwargs)

    monkeypatch.setattr(sampling, "pick", slow_pick)
    studio = Studio(run)
    app = build_app(studio)
    port = browser.free_port()
    try:
        launch(app, "127.0.0.1", port, block=False)
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url, None)
        jobs = [Client(url, verbose=False).submit(PROMPT, 2, 1, 1.0, 16, seed, None, 2, api_name="/generate")
                for seed in range(3)]
        progress, deadline = [], time.monotonic() + REQUEST_SECONDS
        while not all(job.done() for job in jobs) and time.monotonic() < deadline:
            progress += [unit for job in jobs for unit in (job.status().progress_data or [])]
            time.sleep(0.05)
        results = [job.result(timeout=REQUEST_SECONDS) for job in jobs]
    finally:
        app.close()
        studio.close()
    assert [len(gallery) for gallery, _, _ in results] == [1, 1, 1]
    assert len({Path(grid).read_bytes() for _, grid, _ in results}) == 3, "each seed gives other images"
    assert overlapped and not any(overlapped), "two requests sampled at the same time"
    tokens = [unit for unit in progress if unit.unit == "token"]
    assert tokens and {unit.length for unit in tokens} == {16}, progress  # 4x4 image tokens
    assert len({unit.index for unit in tokens}) > 1, "the bar moves as tokens are sampled"


def test_the_page_in_a_browser_shows_the_images_asked_for(server):
    """Type a prompt, press Generate and count the gallery's images in headless Chromium; then a
    bad value: its message shows in the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser.chromium()
    try:
        assert browser.generate_in_page(driver, server[0], "a large blue square at the bottom", 5, 3) == 3
        browser.fill(driver, "keep", "9")
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        WebDriverWait(driver, REQUEST_SECONDS).until(
            lambda d: "--keep 9: cannot keep more images than --num 5" in d.find_element(By.TAG_NAME, "body").text)
    finally:
        driver.quit()


def test_without_the_browser_the_browser_test_fails_saying_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(browser, "CHROMEDRIVER", tmp_path / "chromedriver")
    with pytest.raises(browser.BrowserMissing, match=r"chromedriver not found.*apt-get install chromium "
                                                     r"chromium-driver"):
        browser.chromium()


def test_the_screenshot_command_writes_the_page_with_its_images(run, tmp_path, capsys):
    out = tmp_path / "docs" / "serve.png"
    assert screenshot_command.main(["--run", str(run), "--out", str(out), "--num", "4", "--keep", "2",
                                    "--width", "1000", "--height", "700"]) == 0
    assert "the page with 2 images" in capsys.readouterr().out
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width == 1000


def run_serve(*args: str, block_gradio: bool = False) -> subprocess.CompletedProcess:
    """``python -m dalle_fast.serve ARGS`` (``block_gradio``: as if gradio were not installed)."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['dalle_fast.serve', *{list(args)!r}]\n"
            + ("sys.modules['gradio'] = None\n" if block_gradio else "")
            + "runpy.run_module('dalle_fast.serve', run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=STARTUP_SECONDS)


def test_without_gradio_the_command_says_how_to_install_it(run):
    done = run_serve("--run", str(run), block_gradio=True)
    assert done.returncode == 2
    assert 'pip install -e ".[serve]"' in done.stderr and "Traceback" not in done.stderr


def test_importing_dalle_fast_and_the_serve_package_does_not_import_gradio():
    code = "import sys, dalle_fast, dalle_fast.serve, dalle_fast.serve.cli; print('gradio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=STARTUP_SECONDS)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize("make_args, message", [
    (lambda run, tmp, port: ["--run", str(tmp / "nope")], "--run: no such run directory"),
    (lambda run, tmp, port: ["--run", str(tmp)], "holds no config.json"),
    (lambda run, tmp, port: ["--run", str(run), "--port", "70000"], "argument --port: must be a port number"),
    (lambda run, tmp, port: ["--run", str(run), "--port", str(port)], "--port {port}: cannot listen there"),
])
def test_usage_errors_exit_2_with_one_line(make_args, message, run, server, tmp_path, capsys):
    port = int(re.search(r":(\d+)/", server[0]).group(1))  # taken by the server of this module
    with pytest.raises(SystemExit) as exit_info:
        main(make_args(run, tmp_path, port))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("python -m dalle_fast.serve: error:") and message.format(port=port) in last, last

