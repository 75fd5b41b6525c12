"""The docs and the playground in real Chromium (Playwright driving Debian's /usr/bin/chromium; never a
downloaded browser), with every request that leaves the app's origin aborted and recorded, so a page
that needs a CDN fails here whatever the machine's network.

- `/docs` (Swagger UI) and `/redoc` render the OpenAPI 3.1 document from the app's own assets, and
  the request body Swagger's "Try it out" pre-fills is valid for every endpoint of configs/dev.yaml
  (Swagger's own sample generator, run in the page, against the real input models);
- on the dev app (`serve run`, Sana): Swagger's "Try it out" + "Execute" on `/sana/sprint` answers
  200, and the playground's Sana form, filled and run through the queue, shows progress and the
  image, with the request as curl and as fal-client code.

Install the browser with `apt-get install -y chromium`."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.first_hour_server import DevServer

CHROMIUM = "/usr/bin/chromium"
# Headless, and none of Chromium's own traffic (the machine may have no network to offer).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TITLE = "Generative model services"

pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium: "
                                 "apt-get install -y chromium"),
              pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


class OfflinePage:
    """A page whose requests outside `origin` are aborted (and listed in `blocked`)."""

    def __init__(self, browser: Any, origin: str) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

        def route(r: Any) -> None:
            if r.request.url.startswith((origin, "data:", "blob:")):
                r.continue_()
            else:
                self.blocked.append(r.request.url)
                r.abort()

        self.page.route("**/*", route)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def offline(browser: Any) -> Iterator[Any]:
    pages: list[OfflinePage] = []

    def open_page(origin: str) -> OfflinePage:
        pages.append(OfflinePage(browser, origin))
        return pages[-1]

    yield open_page
    for page in pages:
        page.close()


# ----------------------------------------------------------------------------- docs, no Ray needed
def dev_app_without_ray() -> tuple[Any, dict[str, type]]:
    """The ingress app of every configs/dev.yaml service (routes and schemas only: nothing is called),
    and each endpoint's input model by path."""
    from serve_app.app import ServiceArgs, import_service_module
    from serve_app.ingress import Dispatcher, IngressSettings, create_app
    from tests.app.conftest import load_dev_app

    routes = [import_service_module(args["module"]).build(name, ServiceArgs.model_validate(args))
              for name, args in load_dev_app()["args"]["services"].items()]
    inputs = {spec.route(r.prefix): spec.input_model for r in routes for spec in r.endpoints}
    return create_app(Dispatcher(routes, IngressSettings(storage={"kind": "data_url"}))), inputs


@pytest.fixture(scope="module")
def docs_app() -> Iterator[tuple[str, dict[str, Any], dict[str, type]]]:
    """`(base URL, OpenAPI document, input models)` of the dev app's ingress, served by uvicorn here."""
    import uvicorn

    app, inputs = dev_app_without_ray()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield url, httpx.get(f"{url}/openapi.json", timeout=120).json(), inputs
    server.should_exit = True
    thread.join(timeout=10)


def deref(node: Any, schemas: dict[str, Any]) -> Any:
    """`node` with every `$ref` inlined (as Swagger resolves the document before sampling it)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = deref(schemas[node["$ref"].rsplit("/", 1)[1]], schemas)
            return {**target, **deref({k: v for k, v in node.items() if k != "$ref"}, schemas)}
        return {k: deref(v, schemas) for k, v in node.items()}
    if isinstance(node, list):
        return [deref(v, schemas) for v in node]
    return node


def test_docs_and_redoc_render_offline_and_swagger_examples_are_valid(
        docs_app: tuple[str, dict[str, Any], dict[str, type]], offline: Any) -> None:
    """Point 3: Swagger UI 5 renders the OpenAPI 3.1 document, ReDoc renders it too, both from the
    app's own files; the body "Try it out" pre-fills passes validation on every endpoint."""
    url, doc, inputs = docs_app
    tab = offline(url)
    tab.page.goto(f"{url}/docs")
    tab.page.wait_for_selector(".swagger-ui .info .title", timeout=60_000)
    heading = tab.page.inner_text(".swagger-ui .info .title")
    assert TITLE in heading and "OAS 3.1" in heading
    assert tab.page.locator(".opblock").count() >= len(inputs)
    assert tab.page.locator(".auth-wrapper .authorize").count() == 1  # the API key scheme: Authorize
    bad = {}
    for path, item in doc["paths"].items():
        op = item.get("post", {})
        if "x-serve-app-endpoint" not in op:
            continue
        schema = deref(op["requestBody"]["content"]["application/json"]["schema"], doc["components"]["schemas"])
        sample = tab.page.evaluate("(s) => ui.fn.getSampleSchema(s, 'application/json', {})", schema)
        try:
            inputs[path].model_validate_json(sample)  # type: ignore[attr-defined]
        except Exception as exc:
            bad[path] = f"{sample}\n{exc}"
    assert not bad, json.dumps(bad, indent=1)
    tab.page.goto(f"{url}/redoc")
    # A function, not an expression: Playwright evaluates a bare expression with eval(), which the
    # page's CSP (no 'unsafe-eval') refuses.
    for text in (TITLE, "/sana/sprint"):
        tab.page.wait_for_function("(text) => document.body.innerText.includes(text)", arg=text, timeout=60_000)
    assert tab.blocked == [] and tab.errors == [], (tab.blocked, tab.errors)


# ----------------------------------------------------------------------------- the dev app on Ray
@pytest.fixture(scope="module")
def dev_app() -> Iterator[DevServer]:
    server = DevServer(tls=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_swagger_try_it_out_runs_the_example(dev_app: DevServer, offline: Any) -> None:
    """Point 3 on the running app: Try it out, Execute, 200 with an image."""
    doc = httpx.get(f"{dev_app.url}/openapi.json", timeout=120).json()
    operation = doc["paths"]["/sana/sprint"]["post"]["operationId"]
    tab = offline(dev_app.url)
    tab.page.goto(f"{dev_app.url}/docs")
    block = tab.page.locator(f"#operations-sana-{operation}")
    block.locator(".opblock-summary").first.click()
    block.locator("button.try-out__btn").click()
    block.locator("button.execute").click()
    status = block.locator(".live-responses-table tbody .response .response-col_status").first
    status.wait_for(timeout=240_000)
    body = block.locator(".live-responses-table tbody .response .response-col_description pre").first.inner_text()
    assert status.inner_text().strip() == "200", body
    assert json.loads(body)["images"][0]["width"] == 1024  # the example's square_hd
    assert tab.blocked == []


def test_playground_runs_the_sana_form_through_the_queue(dev_app: DevServer, offline: Any, tmp_path: Path) -> None:
    """Point 4: the form comes from the schema (textarea prompt, image size as a preset select, bounds),
    a run goes through the queue with live progress, and the image is shown; curl and fal-client code
    show the same request."""
    tab = offline(dev_app.url)
    page = tab.page
    page.goto(f"{dev_app.url}/playground")
    page.wait_for_selector("body[data-ready=true]", timeout=60_000)
    page.click("a[data-endpoint='sana']")
    assert page.locator("textarea[name=prompt]").count() == 1  # fal's ui hint
    options = page.locator("select[name=image_size] option").all_inner_texts()
    assert {"square", "square_hd", "landscape_16_9", "custom…"} <= set(options)
    assert page.get_attribute("input[name=num_inference_steps]", "max") == "50"
    page.fill("textarea[name=prompt]", "a red fox in the snow")
    page.select_option("select[name=image_size]", "square")
    page.click("#more summary")
    page.fill("input[name=num_inference_steps]", "4")
    page.fill("input[name=seed]", "11")
    page.evaluate("""() => {
        window.statuses = [];
        const node = document.getElementById('status-text');
        new MutationObserver(() => window.statuses.push(node.textContent))
            .observe(node, {childList: true, characterData: true, subtree: true});
    }""")
    page.click("#run")
    page.wait_for_function("() => { const i = document.querySelector('#output img');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=300_000)
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
    image = page.eval_on_selector("#output img", "i => [i.naturalWidth, i.naturalHeight, i.src]")
    assert image[:2] == [512, 512] and image[2].startswith(f"{dev_app.url}/files/")
    statuses = page.evaluate("window.statuses")
    assert any(s.startswith("In queue") for s in statuses), statuses
    assert any(s.startswith("Running") and "/4" in s for s in statuses), statuses  # progress events
    assert page.inner_text("#status-text").startswith("Completed")
    output = json.loads(page.text_content("#output-json") or "")
    assert output["seed"] == 11 and output["prompt"] == "a red fox in the snow"
    page.click(".tabs button[data-tab=curl]")
    curl = page.inner_text("#snippet")
    assert f"{dev_app.url}/queue/sana " in curl and '"image_size":"square"' in curl
    page.click(".tabs button[data-tab=python]")
    python = page.inner_text("#snippet")
    assert 'fal_client.subscribe(\n    "sana",' in python and '"num_inference_steps": 4' in python
    assert tab.blocked == [] and tab.errors == [], (tab.blocked, tab.errors)
