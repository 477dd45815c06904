"""Drives the admin console in headless Chromium (Selenium with Debian's chromium and
chromium-driver) and prints what it saw as one JSON object; the Rust test asserts on it.

    console_browser.py federation PLAN.json   the three-node walk-through (see tests/console.rs)
    console_browser.py xss URL                a page that shows hostile text

No network beyond the loopback console; a fresh profile directory per run."""

import json
import shutil
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TIMEOUT = 30


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1800",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    return driver


def text(driver, css):
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text.strip() if found else None


def rows(driver, table, key):
    """{data-KEY: {class: text}} for every row of table#TABLE that has data-KEY."""
    out = {}
    for row in driver.find_elements(By.CSS_SELECTOR, f"table#{table} tr[data-{key}]"):
        cells = {}
        for cell in row.find_elements(By.CSS_SELECTOR, "td"):
            for name in (cell.get_attribute("class") or "").split():
                cells[name] = cell.text.strip()
        cells["_text"] = row.text.strip()
        out[row.get_attribute(f"data-{key}")] = cells
    return out


def hostile_markup(driver):
    """What a script injected into the page would leave behind."""
    return {
        "scripts": len(driver.find_elements(By.TAG_NAME, "script")),
        "images": len(driver.find_elements(By.TAG_NAME, "img")),
        "title": driver.title,
        "flag": driver.execute_script("return window.__entente_xss === undefined ? null : 1;"),
    }


def federation(plan, driver):
    seen = {}
    # The middle node: pulls from the origin, is pulled from by the third.
    driver.get(plan["middle"] + "/")
    seen["middle_node"] = text(driver, "#node")
    seen["middle_pulled"] = rows(driver, "pulled", "peer")
    seen["middle_served"] = rows(driver, "served", "partner")
    seen["middle_partners"] = rows(driver, "partners", "partner")
    seen["middle_certificates"] = rows(driver, "certificates", "certificate")
    seen["middle_ledger_records"] = text(driver, "#ledger-records")
    driver.save_screenshot(plan["screenshot"])

    # The origin's explain form, filled in and submitted as a person would.
    decisions = {}
    for name, item in plan["explain"].items():
        driver.get(plan["origin"] + "/explain")
        Select(driver.find_element(By.NAME, "partner")).select_by_value(plan["explain_partner"])
        box = driver.find_element(By.NAME, "item")
        box.clear()
        box.send_keys(item)
        driver.find_element(By.CSS_SELECTOR, "form#explain button").click()
        WebDriverWait(driver, TIMEOUT).until(
            lambda d: d.find_elements(By.ID, "decision") or d.find_elements(By.ID, "problem")
        )
        decisions[name] = {
            "class": driver.find_element(By.ID, "decision").get_attribute("class"),
            "decision": text(driver, "#decision"),
            "rule": text(driver, "#rule"),
            "value": text(driver, "dl.item dd.value"),
        }
    seen["explain"] = decisions

    # Who received a value, on the origin and on the middle node.
    received = {}
    for where in ("origin", "middle"):
        driver.get(plan[where] + "/ledger")
        box = driver.find_element(By.NAME, "value")
        box.send_keys(plan["lookup_value"])
        driver.find_element(By.CSS_SELECTOR, "form#lookup button").click()
        WebDriverWait(driver, TIMEOUT).until(lambda d: d.find_elements(By.ID, "scanned"))
        received[where] = {
            "deliveries": [
                {
                    "partner": row.get_attribute("data-partner"),
                    "path": row.find_element(By.CSS_SELECTOR, "td.path").text.strip(),
                }
                for row in driver.find_elements(By.CSS_SELECTOR, "table#deliveries tr[data-partner]")
            ],
            "value": text(driver, "dl.item dd.value"),
        }
    seen["received"] = received
    seen["hostile"] = hostile_markup(driver)
    return seen


def xss(url, driver):
    driver.get(url)
    seen = hostile_markup(driver)
    seen["details"] = [
        cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "table#rejections td.detail")
    ]
    return seen


def main():
    mode, arg = sys.argv[1], sys.argv[2]
    profile = tempfile.mkdtemp(prefix="entente-chromium-")
    driver = browser(profile)
    try:
        if mode == "federation":
            with open(arg, encoding="utf-8") as f:
                seen = federation(json.load(f), driver)
        else:
            seen = xss(arg, driver)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
