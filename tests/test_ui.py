"""The MLflow UI comparison: a tiny two-norm sweep is recorded for it (parent run, named and tagged
children, epoch steps, system metrics), and Debian's chromium, driven headless by Selenium, finds
the runs, opens the compare view for two of them and sees ``val/acc`` charted.

Outside CI the browser test skips when chromium or chromedriver is missing (`make browser` installs
them as root); ``NORMLAB_REQUIRE_BROWSER=1`` (set by .ci/run) turns that skip into a failure.
``NORMLAB_SCREENSHOTS=<dir>`` keeps the screenshots there (`make screenshots` -> docs/).
"""

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from normlab.config.paths import PROJECT_ROOT
from normlab.report import page as report
from tests.helpers import cell_runs, run_sweep

LOADING = ".ag-overlay-loading-wrapper"  # the runs table reloading: it takes clicks until it is gone
# One process runs this module (its module fixtures sweep once); slow: a sweep, a server, a browser.
pytestmark = [pytest.mark.xdist_group("ui"), pytest.mark.slow]

STUDY = "ui_test"
NAMES = ("none-bs256-lr0.9-s0", "scratch-bs256-m0.1-lr0.9-s0")  # no norm, no running statistics: no momentum
EPOCHS = 3


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store holding a finished two-norm sweep and its report; its URI."""
    workdir = tmp_path_factory.mktemp("ui")
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    arguments = [
        f"study={STUDY}",
        "norm=none,scratch",
        "data.train_subset=2048",
        "data.test_subset=1000",
        f"trainer.max_epochs={EPOCHS}",
        "trainer.accelerator=cpu",
        "eval.precise_samples=128",
        "tracking.system_metrics_s=0.5",
    ]
    result = run_sweep(arguments, store, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    report.write(STUDY, store, out_dir=workdir / "report")
    return store


def test_a_sweep_is_a_parent_run_with_named_tagged_children(swept: str) -> None:
    client = MlflowClient(swept)
    experiment = client.get_experiment_by_name(STUDY)
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.kind = 'sweep'")
    assert parent.info.run_name.startswith(f"{STUDY} 20") and parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "sweep_summary.txt" in artifacts
    results = {a.path for a in client.list_artifacts(parent.info.run_id, "results")}
    assert {"results/RESULTS.md", "results/results.csv"} <= results

    children = {run.info.run_name: run for run in cell_runs(swept, STUDY)}
    assert set(children) == set(NAMES)
    for name, run in children.items():
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert (tags["study"], tags["norm"], tags["batch_size"]) == (STUDY, name.split("-")[0], "256")
        assert (tags["lr"], tags["seed"], tags["status"]) == ("0.9", "0", "finished")
        assert tags.get("momentum") == ("0.1" if name.startswith("scratch") else None)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
        assert sorted(steps) == list(range(1, EPOCHS + 1))  # step = epoch: curves overlay by epoch
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
            run.data.metrics
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ui(swept: str) -> Iterator[tuple[str, str]]:
    """``make ui`` over the sweep's store on a free port: its URL once it answers, and the address
    it prints for the study's runs."""
    port = _free_port()
    environment = {**os.environ, "PORT": str(port), "MLFLOW_TRACKING_URI": swept}
    server = subprocess.Popen(
        ["make", "-s", "ui"],
        cwd=PROJECT_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # make, mlflow and its workers: one group to stop
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert server.stdout.readline().strip() == f"MLflow UI: {url}"
        study, page = server.stdout.readline().split()  # one line per study: the one in this store
        assert study == STUDY and page.startswith(url) and "workflowType=machine_learning" in page
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the MLflow UI did not answer within 120 s"
            time.sleep(1)
        yield url, page
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _browser():  # -> selenium WebDriver; imported here so the module loads without selenium
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        message = "Debian's chromium and chromium-driver are not installed (make browser, as root)"
        if os.environ.get("NORMLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,900"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_browser_newcomer_lands_on_the_chart_view_grouped_by_setup(
    swept: str, ui: tuple[str, str], tmp_path: Path
) -> None:
    """From the address ``make ui`` prints, in a fresh browser profile and without a click: the
    study's cells in model-training mode (no GenAI overview), in the chart view, seeds grouped by
    setup: the val/acc chart draws one line per setup (its seeds' mean, with their min-max band)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get("NORMLAB_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    setups = sorted({run.data.tags["setup"] for run in cell_runs(swept, STUDY)})
    browser = _browser()  # a new headless chromium: a fresh profile, no mode or view remembered
    wait = WebDriverWait(browser, 60)
    card = "[data-testid='experiment-view-compare-runs-card']"

    def val_acc_legend(b) -> list[str] | bool:  # the chart titled val/acc, once its legend is drawn
        try:  # the cards re-render while the charts load: retry on a stale one
            texts = [c.text for c in b.find_elements(By.CSS_SELECTOR, card)]
        except StaleElementReferenceException:
            return False
        legends = [text.splitlines() for text in texts if text.split("\n")[0] == "val/acc"]
        lines = [line for line in legends[0] if line.endswith(" (val/acc)")] if legends else []
        return lines if len(lines) >= len(setups) else False

    try:
        browser.get(ui[1])
        legend = wait.until(val_acc_legend)
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "Detect Issues" not in body  # GenAI's overview
        # One line per setup; the sweep's own run, which the UI lists with its cells whatever the
        # search and which has no metrics, is the "Unassigned" group.
        assert sorted(set(legend) - {"Unassigned (val/acc)"}) == [f"{setup} (val/acc)" for setup in setups]
        assert len(legend) == len(set(legend)) and len(setups) == 2
        browser.save_screenshot(str(shots / "ui-group-by-setup.png"))
    finally:
        browser.quit()


def test_browser_compares_two_runs_and_charts_val_acc(
    swept: str, ui: tuple[str, str], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get("NORMLAB_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(swept)
    experiment = client.get_experiment_by_name(STUDY).experiment_id
    (parent,) = client.search_runs([experiment], filter_string="tags.kind = 'sweep'")

    browser = _browser()
    wait = WebDriverWait(browser, 60)

    def link(text: str):  # a run-name link in the runs table
        return (By.XPATH, f"//a[contains(@href, '/runs/')][normalize-space(.) = '{text}']")

    try:
        browser.get(f"{ui[0]}/#/experiments/{experiment}/runs")
        wait.until(shown.visibility_of_element_located(link(parent.info.run_name)))
        for close in browser.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
            close.click()  # the assistant side panel, where it opens
        # Filter the study's runs by tags, as a user narrows a study down.
        search = browser.find_element(By.CSS_SELECTOR, "input[placeholder*='metrics.']")
        search.send_keys("tags.kind = 'cell' and tags.batch_size = '256'", Keys.ENTER)
        wait.until(lambda b: "searchFilter=tags.kind" in b.current_url)
        # The children sit under their sweep's parent run: expand it.
        parent_row = f"[row-id='{parent.info.run_id}']"
        # The filtered table reloads under a loading overlay, which takes clicks until it is gone.
        wait.until(shown.invisibility_of_element_located((By.CSS_SELECTOR, LOADING)))
        expand = (By.CSS_SELECTOR, f".ag-pinned-left-cols-container {parent_row} button")
        wait.until(shown.element_to_be_clickable(expand)).click()
        run_ids = []
        for name in NAMES:
            anchor = wait.until(shown.visibility_of_element_located(link(name)))
            run_ids.append(anchor.get_attribute("href").rsplit("/", 1)[-1])
        browser.save_screenshot(str(shots / "ui-runs.png"))
        for run_id in run_ids:
            row = f".ag-pinned-left-cols-container [row-id='{run_id}']"
            browser.find_element(By.CSS_SELECTOR, f"{row} input[type=checkbox]").click()
        compare = (By.XPATH, "//button[normalize-space(.) = 'Compare']")
        wait.until(shown.element_to_be_clickable(compare)).click()

        wait.until(lambda b: "compare-runs" in b.current_url and all(i in b.current_url for i in run_ids))
        wait.until(shown.text_to_be_present_in_element((By.TAG_NAME, "body"), "Comparing 2 Runs"))
        val_acc = (By.XPATH, "//a[contains(@href, 'val%2Facc')]")  # the metric's row in the compare view
        metric = wait.until(shown.presence_of_element_located(val_acc))
        browser.execute_script("arguments[0].scrollIntoView()", metric)
        metric.click()

        # The metric page overlays both runs' val/acc curves, one plotly trace each, by epoch.
        traces = ".js-plotly-plot .scatterlayer .trace"
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, traces)) >= 2)
        body = browser.find_element(By.TAG_NAME, "body").text
        for name in NAMES:
            assert f"{name} (val/acc)" in body  # its curve's legend entry
        curves = browser.find_elements(By.CSS_SELECTOR, f"{traces} path.js-line")
        assert len(curves) >= 2 and all(curve.get_attribute("d") for curve in curves)
        assert "Step" in body
        browser.save_screenshot(str(shots / "ui-compare.png"))
    finally:
        browser.quit()
    assert (shots / "ui-compare.png").stat().st_size > 10_000
