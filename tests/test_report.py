"""`mvq report`: the page of a run and of a demo folder, opened in headless Chromium."""

import html
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torchvision.utils import save_image

from mvq.cli import main
from mvq.report.page import write_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason="Debian's chromium is not installed (make test installs it)",
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]  # no network, even by mistake
# Injected first in <head> of a copy of the page: records every error and, once the page has
# loaded, writes into the DOM how many images there are and which did not decode.
CHECK = """<script>
window.__errors = [];
window.addEventListener(
  "error", e => __errors.push(String(e.message || (e.target && e.target.src))), true);
console.error = (...a) => __errors.push(a.join(" "));
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const pre = document.createElement("pre");
  pre.id = "mvq-check";
  pre.textContent = JSON.stringify({images: imgs.length, bad: bad, errors: __errors});
  document.body.appendChild(pre);
});
</script>"""
EVAL = {
    "mse": 0.1123,
    "fd_fmnist": 12.7,
    "bits_per_image": 31,
    "unavailable": {"fid": "Inception weights not found: put the file in ~/.cache"},
    "meta": {"split": "val", "images": 10000},
}


def chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile{len(list(tmp.glob('profile*')))}"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def check_in_browser(page: Path, tmp: Path) -> Path:
    """Every image decoded, no error or console message; returns a screenshot of the page."""
    probe = page.with_name("check.html")
    probe.write_text(page.read_text().replace("<head>", "<head>" + CHECK, 1))
    run = chromium(
        probe, tmp, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom"
    )
    found = re.search(r'<pre id="mvq-check">(.*?)</pre>', run.stdout, flags=re.S)
    assert found, run.stderr[-2000:]
    result = json.loads(html.unescape(found.group(1)))
    assert result["images"] > 0 and result["bad"] == [] and result["errors"] == [], result
    assert not [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    shot = tmp / f"{page.stem}.png"
    chromium(page, tmp, "--window-size=1280,2400", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000
    if os.environ.get("MVQ_SCREENSHOT_DIR"):  # keep it for a look
        shutil.copy(shot, Path(os.environ["MVQ_SCREENSHOT_DIR"]) / shot.name)
    return shot


def assert_offline(page: str) -> None:
    """Only embedded images and in-page links; no script, no external reference."""
    refs = re.findall(r"""(?:src|href)=["']([^"']*)["']""", page)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), refs[:5]
    assert "<script" not in page and "http://" not in page and "https://" not in page


def fake_demo(root: Path, run: Path, vqvae2_model: Path) -> Path:
    """``mvq demo``'s layout: two tokenizer runs, a prior run, tokens, grids, metrics.md."""
    demo = root / "demo"
    shutil.copytree(run, demo / "mvqvae")
    shutil.copytree(vqvae2_model, demo / "vqvae2" / "model")
    (demo / "vqvae2" / "metrics.csv").write_text(
        "step,split,name,value\n2,train,loss,1.5\n6,train,loss,0.9\n6,val,loss,1.1\n"
    )
    prior = demo / "mvqvae_prior"
    (prior / "model").mkdir(parents=True)
    (prior / "model" / "config.json").write_text('{"class": "TransformerPrior", "config": {}}')
    (prior / "metrics.csv").write_text("step,split,name,value\n3,train,nll,2.0\n3,val,nll,2.1\n")
    (demo / "mvqvae_tokens").mkdir()
    (demo / "mvqvae_tokens" / "meta.json").write_text("{}")
    save_image(torch.rand(3, 60, 90), demo / "samples_mvqvae.png")
    save_image(torch.rand(3, 40, 90), demo / "reconstructions.png")
    (demo / "metrics.md").write_text(
        "4+1 tokens.\n\n| model | test MSE |\n|---|---|\n| vqvae2 | 0.1003 |\n| mvqvae | 0.0982 |\n"
    )
    return demo


@needs_chromium
def test_report_of_a_run_opens_offline_in_chromium(tiny_mvq_run, tmp_path) -> None:
    run = shutil.copytree(tiny_mvq_run, tmp_path / "run")
    (run / "eval").mkdir()
    (run / "eval" / "eval.json").write_text(json.dumps(EVAL))
    page = write_report(run)
    assert page == run / "report.html"
    text = page.read_text()
    assert_offline(text)
    for fragment in (
        "MVQVAE",
        "num_hypotheses",
        "fd_fmnist",
        "Inception weights not found",
        "compose:",
        "transfer:",
        "dimensions:",
        "diversity:",
        "codebook:",
        "training reconstructions",
    ):
        assert fragment in text, fragment
    check_in_browser(page, tmp_path)


@needs_chromium
def test_report_of_a_demo_folder_puts_runs_side_by_side(
    tiny_mvq_run, tiny_vqvae2_model, tmp_path, capsys
) -> None:
    demo = fake_demo(tmp_path, tiny_mvq_run, tiny_vqvae2_model)
    out = tmp_path / "page" / "demo.html"
    assert main(["report", str(demo), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text()
    assert_offline(text)
    side = text[text.index("Runs side by side") :]
    rows = re.findall(r"<tr><td><a href='#run-([\w-]+)'>", side)
    assert rows == ["mvqvae", "mvqvae_prior", "vqvae2"]
    assert "<td>0.0982</td>" in text  # metrics.md as a table
    assert "samples_mvqvae.png: images sampled from the prior trained on mvqvae" in text
    vqvae2 = text[text.index("id='run-vqvae2'") :]
    assert "reconstructions:" in vqvae2 and "compose:" not in vqvae2  # MVQ figures: MVQ only
    check_in_browser(out, tmp_path)


def test_report_of_a_sweep_and_bad_folders(tmp_path, capsys) -> None:
    sweep = tmp_path / "sweep"
    (sweep / "cells" / "a").mkdir(parents=True)
    (sweep / "cells" / "a" / "metrics.csv").write_text("step,split,name,value\n5,train,loss,1\n")
    (sweep / "results.csv").write_text("cell,mse\na,0.25\n")
    text = write_report(sweep).read_text()
    assert "<td>0.25</td>" in text and "cells/a" in text and "run in progress" in text
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


README = Path(__file__).resolve().parents[1] / "README.md"
TINY_TRAIN = [
    "--max-steps",
    "6",
    "--batch-size",
    "8",
    *(
        a
        for s in (
            "model_config.channels=16",
            "model_config.res_channels=8",
            "model_config.num_hypotheses=8",
            "train.val_batches=1",
        )
        for a in ("--set", s)
    ),
]


def tour_commands() -> list[list[str]]:
    """The ``mvq`` lines of the README's Tour block, comments dropped."""
    tour = README.read_text().split("## Tour", 1)[1]
    block = re.search(r"```bash\n(.*?)```", tour, flags=re.S).group(1)
    return [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.strip()]


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_readme_tour_commands_run(tmp_path, tiny_vqvae2_model, monkeypatch, capsys) -> None:
    """Every Tour line, as written; training shortened and fewer images (options appended)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(README.parent / "configs")
    commands = tour_commands()
    assert [c[:2] for c in commands] == [
        ["mvq", "train"],
        *[["mvq", "viz"]] * 2,
        *[["mvq", "report"]] * 2,
    ]
    for cmd in commands:
        extra = {"train": TINY_TRAIN, "viz": ["--n", "2"]}.get(cmd[1], [])
        if cmd[1] == "report" and "runs/demo" in cmd:  # a demo folder: this run and a VQVAE2
            shutil.copytree(tmp_path / "runs" / "mvq_s4", tmp_path / "runs" / "demo" / "mvqvae")
            shutil.copytree(tiny_vqvae2_model, tmp_path / "runs" / "demo" / "vqvae2" / "model")
        assert main([*cmd[1:], *extra]) == 0, cmd
    assert (tmp_path / "runs/mvq_s4/viz/compose.png").is_file()
    assert len(list((tmp_path / "runs/mvq_s4/viz").glob("*.png"))) == 7
    assert "vqvae2" in (tmp_path / "runs/demo/report.html").read_text()
    assert (tmp_path / "runs/mvq_s4/report.html").is_file()
