"""Shared pytest fixtures. The browser ones start their own JupyterLab server and Chromium, and stop them
afterwards, also when a test fails; a test that does not ask for them starts nothing."""
import sys, tempfile
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).parent))          # tests/browser_support.py
sys.path.insert(1, str(Path(__file__).parents[1]))      # this checkout's collapse_lab, installed (-e) or not


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread while a module's tests run (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    their models are tiny, and on shared cores a second thread only waits (3-25x slower measured)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try: yield
    finally: torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def lab_server():
    "A private JupyterLab server (token, free loopback port, COLLAPSE_LAB_QUICK=1) on a temporary copy of nbs/."
    import browser_support as bs
    why = bs.missing_browser_deps()
    if why: pytest.skip(f"browser tests need Chromium and Playwright: {why}")
    with tempfile.TemporaryDirectory(prefix="collapse_lab_lab_") as d:
        server = bs.LabServer(Path(d))
        try:
            server.start()
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def browser(lab_server):
    "Debian's headless Chromium driven by Playwright (never a downloaded browser)."
    import browser_support as bs
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=bs.CHROMIUM, headless=True, args=bs.CHROMIUM_ARGS)
        try: yield b
        finally: b.close()


@pytest.fixture
def lab_page(browser, lab_server, request):
    "A fresh browser page (1400x1000) whose console errors are collected in `page.console_messages`."
    import browser_support as bs
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    page.console_messages = bs.attach_console(page)
    try: yield page
    finally:
        try: bs.screenshot(page, f"last_{request.node.name}")   # how the page looked at the end, pass or fail
        except Exception: pass
        ctx.close()
        try: lab_server.close_sessions()        # the next test starts with no kernel left running
        except Exception: pass


def pytest_terminal_summary(terminalreporter):
    "Print what the browser tests measured (tutorial run times, slider-to-plot latency), even without -s."
    bs = sys.modules.get("browser_support")
    if bs is not None and bs.REPORT:
        terminalreporter.section("browser measurements")
        for line in bs.REPORT: terminalreporter.write_line(line)
