"""The Prefect UI as a user reads it, in Debian's headless chromium (the `browser` fixture):
a build run's failure artifact, rendered from its markdown by the UI itself."""

import os
import time

from selenium.webdriver.common.by import By


def rendered_rows(browser, timeout=60) -> list[list[str]]:
  """The cells' texts of every table row the artifact page shows, once it has rendered."""
  deadline = time.monotonic() + timeout
  while True:
    rows = [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td")]
            for row in browser.find_elements(By.CSS_SELECTOR, "tr")]
    if any(rows) or time.monotonic() > deadline:
      return [r for r in rows if r]
    time.sleep(0.5)


def test_the_ui_shows_a_failure_artifact_with_the_failed_paths_and_grouped_reasons(
    images, image_corpus, prefect_server, api, browser):
  params, state = images
  [artifact] = api.post("/artifacts/filter", {
      "artifacts": {"key": {"any_": ["build-images-failures"]}},
      "flow_runs": {"id": {"any_": [str(state.state_details.flow_run_id)]}}})
  browser.get(f"{prefect_server.url.removesuffix('/api')}/artifacts/artifact/{artifact['id']}")
  rows = rendered_rows(browser)
  page = browser.find_element(By.TAG_NAME, "body").text
  assert "Failures of images" in page, page[:3000]
  # The reasons grouped, each with its count: `<image>` and `<n>` shown, not eaten as tags.
  assert ["read", "cannot read <image>: No such file or directory", "1"] in rows, rows
  assert ["manifest", "line <n> is not valid JSON: Expecting property name enclosed in double "
          "quotes at column 2", "1"] in rows, rows
  # The failed inputs, with the path of the one that is missing.
  missing = os.path.join(os.path.dirname(image_corpus["train"]), "no-such.png")
  [row] = [r for r in rows if r[1] == "missing"]
  assert row[0].startswith(image_corpus["train"] + ":")  # the manifest and its line
  assert row[2:] == ["read", f"cannot read {missing}: No such file or directory"], row
