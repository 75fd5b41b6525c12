"""A service's page routes: its own files first, then the framework's shared page scripts (fal's
realtime signalling as `static/realtime.js`), nothing outside those directories."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.endpoints import ServiceRoute
from serve_app.ingress.pages import SHARED_DIRS, add_page_routes


def client(page_dir: Path) -> TestClient:
    app = FastAPI()
    add_page_routes(app, ServiceRoute(name="cam", prefix="/cam", handle=None, page_dir=str(page_dir)))
    return TestClient(app)


def test_page_own_files_then_shared_scripts_and_nothing_else(tmp_path: Path) -> None:
    page = tmp_path / "page"
    page.mkdir()
    (page / "index.html").write_text('<script src="static/realtime.js"></script>')
    (page / "app.js").write_text("own();")
    (tmp_path / "secret.txt").write_text("not served")
    http = client(page)
    r = http.get("/cam/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html") and "realtime.js" in r.text
    assert http.get("/cam/static/app.js").text == "own();"
    shared = http.get("/cam/static/realtime.js")
    assert shared.status_code == 200 and "window.realtime" in shared.text
    assert shared.text == (SHARED_DIRS[0] / "realtime.js").read_text()
    for path in ("/cam/static/../secret.txt", "/cam/static/%2e%2e/secret.txt", "/cam/static/missing.js",
                 "/cam/static/../../ingress/pages.py"):
        assert http.get(path).status_code == 404, path


def test_a_service_file_of_the_same_name_wins(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>page</p>")
    (tmp_path / "realtime.js").write_text("mine();")
    assert client(tmp_path).get("/cam/static/realtime.js").text == "mine();"
