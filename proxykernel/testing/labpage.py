"""JupyterLab 4 in headless Chromium, driven by playwright: open a notebook, wait for its kernel,
run a cell as a user types it, read what the cell shows.

    with chromium(tmp_path / "browser") as browser:
        notebook = LabNotebook.open(browser, server.url("lab/tree/analysis.ipynb"))
        notebook.wait_for_kernel("SSH lab test")
        assert notebook.run("print(1+1)") == "2"

The browser is Debian's ``chromium`` (apt), never one that playwright downloads; it gets a fresh
profile per ``chromium()`` and playwright closes it. Every wait has a bound (a TimeoutError, or an
AssertionError naming what was awaited). Used by tests/test_lab.py.
"""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

from playwright.sync_api import BrowserContext, Locator, Page, sync_playwright

__all__ = ["CHROMIUM", "CHROMIUM_FLAGS", "chromium", "LabNotebook", "LAB_TIMEOUT", "CELL_TIMEOUT"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LAB_TIMEOUT = 45.0  # seconds for Lab to load and its kernel to be idle (~12 s on a busy 2-core machine)
CELL_TIMEOUT = 30.0  # seconds for a cell to finish
POLL_INTERVAL = 0.1
_NUMBERED = re.compile(r"^\[\d+\]:$")  # a prompt of a finished cell: "[3]:" (running: "[*]:")


@contextmanager
def chromium(profile: Path, timeout: float = LAB_TIMEOUT) -> Iterator[BrowserContext]:
    """Headless Chromium with a fresh profile in ``profile``; playwright closes it on exit. Its own
    default timeout for every action is ``timeout``."""
    with sync_playwright() as playwright:
        # Playwright takes the profile as an argument of its own: it refuses --user-data-dir in args.
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            context.set_default_timeout(timeout * 1000)
            yield context
        finally:
            context.close()


class LabNotebook:
    """One notebook open in a JupyterLab page; tests run cells in it through the editor, as typed."""

    def __init__(self, page: Page) -> None:
        self.page = page
        # The notebook's document panel: its toolbar shows the kernel, its cells are .jp-Cell.
        self.panel = page.locator(".jp-NotebookPanel").first

    @classmethod
    def open(cls, browser: BrowserContext, url: str) -> LabNotebook:
        """A new page on ``url`` (``server.url("lab/tree/NAME.ipynb")``), once the notebook shows."""
        page = browser.new_page()
        page.goto(url)
        notebook = cls(page)
        notebook.panel.locator(".jp-Notebook .jp-Cell").first.wait_for(state="visible")
        return notebook

    def close(self) -> None:
        self.page.close()

    def _dialog(self) -> str:
        """The text of a dialog Lab shows instead of starting the kernel ("Select Kernel"...), or ""."""
        dialog = self.page.locator(".jp-Dialog")
        return dialog.first.inner_text() if dialog.count() else ""

    def kernel_status(self) -> str:
        """The execution indicator's state: "connecting", "starting", "idle", "busy", "unknown"..."""
        return self.panel.locator(".jp-Notebook-ExecutionIndicator").first.get_attribute("data-status") or ""

    def kernel_name(self) -> str:
        """The display name of the notebook's kernel, as the toolbar shows it."""
        return self.panel.locator(".jp-Toolbar-kernelName").first.get_attribute("aria-label") or ""

    def wait_for_kernel(self, display_name: str, timeout: float = LAB_TIMEOUT) -> float:
        """Wait until the toolbar shows kernel ``display_name`` and it is idle; the seconds it took.
        A dialog (no such kernel, kernel died) fails at once with its text."""
        began = time.monotonic()
        while True:
            name, status, dialog = self.kernel_name(), self.kernel_status(), self._dialog()
            assert not dialog, "Lab shows a dialog instead of the kernel: %r" % dialog
            if name == display_name and status == "idle":
                return time.monotonic() - began
            assert time.monotonic() - began < timeout, (
                "kernel %r not idle after %g s: toolbar shows %r, status %r" % (display_name, timeout, name, status))
            time.sleep(POLL_INTERVAL)

    def cells(self) -> Locator:
        return self.panel.locator(".jp-Notebook .jp-Cell")

    def _empty_last_cell(self) -> Locator:
        """The last cell, focused in edit mode; a new one below it first if it holds code."""
        count = self.cells().count()
        last = self.cells().nth(count - 1)
        if last.locator(".cm-content").inner_text().strip():
            last.locator(".jp-InputPrompt").click()  # command mode on that cell
            self.page.keyboard.press("Escape")
            self.page.keyboard.press("b")  # Lab's shortcut: insert a cell below
            self.cells().nth(count).wait_for(state="visible")
            last = self.cells().nth(count)
        last.locator(".cm-content").click()
        return last

    def run(self, code: str, timeout: float = CELL_TIMEOUT) -> str:
        """Type ``code`` into an empty last cell, run it with Shift+Enter, and return the text of its
        outputs once it has finished and the kernel is idle (stream, result and error alike)."""
        cell = self._empty_last_cell()
        # insert_text: the text as a paste gives it, so the editor's auto-closed brackets and
        # indentation cannot change what runs.
        self.page.keyboard.insert_text(code)
        typed = cell.locator(".cm-content").inner_text()
        assert typed == code, "the editor holds %r, not %r" % (typed, code)
        self.page.keyboard.press("Shift+Enter")
        prompt = cell.locator(".jp-InputPrompt")
        began = time.monotonic()
        while not (_NUMBERED.match(prompt.inner_text().strip()) and self.kernel_status() == "idle"):
            assert not self._dialog(), "Lab shows a dialog while the cell runs: %r" % self._dialog()
            assert time.monotonic() - began < timeout, (
                "cell %r not finished after %g s: prompt %r, kernel %r, outputs so far %r"
                % (code, timeout, prompt.inner_text(), self.kernel_status(), self._outputs(cell)))
            time.sleep(POLL_INTERVAL)
        return "\n".join(self._outputs(cell)).strip()

    @staticmethod
    def _outputs(cell: Locator) -> List[str]:
        return [text.strip() for text in cell.locator(".jp-OutputArea-output").all_inner_texts()]
