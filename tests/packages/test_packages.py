"""The /v0 API: PUT /v0/workflows/{workflow_id}/jobs/{job_id}/download, and the ZIP behind its
signed URL."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from devkit.fakes.n8n import make_bytes
from gateway.http.app_keys import BLOB_STORE
from gateway.storage.blobs import run_output_key
from store import packages as package_sql
from store import run_files
from store.consumer import StoreConsumer
from tests.support.gateways import GatewayFactory
from tests.support.packages import (
    bare,
    download_url,
    execute_job,
    fetch,
    files_agent,
    put_download,
    upload,
    v0_error,
)
from tests.support.runs import wait_for_run
from tests.support.runtimes import as_agent, first_invoked_run, json_agent, webhook
from tests.support.tenants import Tenant, TenantFactory

PDF = b"%PDF-1.4\n" + make_bytes(700_000)
PNG = b"\x89PNG\r\n\x1a\n" + make_bytes(300_000, offset=5)
RESULT = {"verdict": "approve", "clauses": ["7.2", "9.1"], "outputs": 2}


async def job_with_two_files(tenant: Tenant, runtime: TestServer) -> tuple[dict[str, Any], int]:
    """A finished job: two uploaded files, and the workflow's JSON output."""
    agent = await files_agent(tenant, runtime)
    run_id = await execute_job(
        tenant,
        agent,
        {
            "documents": [
                upload("contract.pdf", PDF, "application/pdf"),
                upload("signature.png", PNG, "image/png"),
            ],
            "note": "urgent",
            # The fake workflow answers input.result as its output.
            "result": RESULT,
        },
    )
    return agent, run_id


async def stored_output(
    tenant: Tenant, db: asyncpg.Pool, run_id: int, ordinal: int, name: str, content: bytes
) -> None:
    """Store an output file for a run, as a runtime's file output would be kept."""
    blobs = tenant.client.app[BLOB_STORE]

    async def chunks() -> AsyncIterator[bytes]:
        yield content

    key = run_output_key(run_id, ordinal, name)
    blob = await blobs.put(key, chunks(), content_type="application/octet-stream")
    await run_files.insert_run_file(
        db,
        run_id=run_id,
        org_id=uuid.UUID(tenant.org_id),
        field="files",
        position=ordinal,
        name=name,
        mime_type="application/octet-stream",
        size_bytes=blob.size,
        sha256=blob.sha256,
        blob_key=key,
        kind=run_files.OUTPUT,
    )


async def test_a_job_downloads_as_a_zip_of_exactly_its_inputs_and_outputs(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent, run_id = await job_with_two_files(tenant, runtime)

    status, ticket = await put_download(tenant, agent["id"], run_id)

    assert status == 200, ticket
    assert set(ticket) == {"id", "status", "signed_url", "workflowId"}
    assert uuid.UUID(ticket["id"])
    assert (ticket["status"], ticket["workflowId"]) == ("ready", str(agent["id"]))
    assert ticket["signed_url"].startswith(str(tenant.client.make_url("/v0/packages/")))

    got = await fetch(ticket["signed_url"])

    assert got.status == 200
    assert got.headers["Content-Type"] == "application/zip"
    assert got.headers["Content-Length"] == str(len(got.body))
    assert got.headers["Content-Disposition"] == (
        f'attachment; filename="contract-reviewer-job-{run_id}.zip"'
    )
    archive = got.zip()
    assert archive.testzip() is None
    assert archive.namelist() == [
        "manifest.json",
        "input.json",
        "inputs/contract.pdf",
        "inputs/signature.png",
        "output.json",
    ]
    assert archive.read("inputs/contract.pdf") == PDF
    assert archive.read("inputs/signature.png") == PNG
    assert json.loads(archive.read("output.json")) == RESULT
    run = await (
        await tenant.client.get(
            f"/api/agents/{agent['id']}/runs/{run_id}?include=input", headers=tenant.auth
        )
    ).json()
    assert json.loads(archive.read("input.json")) == run["input"]

    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["packageId"] == ticket["id"]
    assert (manifest["runId"], manifest["workflowId"]) == (run_id, str(agent["id"]))
    assert manifest["agent"] == {
        "id": agent["id"],
        "name": "Contract Reviewer",
        "output_kind": "json",
    }
    assert (manifest["status"], manifest["error"], manifest["outputs"]) == ("completed", None, 2)
    assert manifest["times"] == {
        "created_at": run["created_at"],
        "started_at": run["started_at"],
        "completed_at": run["completed_at"],
        "duration_ms": run["duration_ms"],
    }
    # A line for each asset, naming where it is and what it holds.
    lines = {line["path"]: line for line in manifest["assets"]}
    assert list(lines) == archive.namelist()[1:]
    for path, line in lines.items():
        data = archive.read(path)
        assert (line["size"], line["sha256"], line["stored"]) == (
            len(data),
            hashlib.sha256(data).hexdigest(),
            True,
        )
    assert lines["inputs/contract.pdf"] | {"uploadedAt": None} == {
        "path": "inputs/contract.pdf",
        "role": "input",
        "name": "contract.pdf",
        "field": "documents",
        "index": 0,
        "type": "application/pdf",
        "size": len(PDF),
        "sha256": hashlib.sha256(PDF).hexdigest(),
        "stored": True,
        "uploadedAt": None,
    }
    assert lines["inputs/signature.png"]["index"] == 1
    assert [line["role"] for line in lines.values()] == ["input"] * 3 + ["output"]


async def test_a_second_put_gives_the_same_package_with_a_fresh_url(
    tenant: Tenant,
    runtime: TestServer,
    consumer: StoreConsumer,
    make_gateway: GatewayFactory,
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-wait", headers=tenant.auth, json={}
    )
    run_id = (await resp.json())["runId"]
    # Another replica whose package URLs live one second.
    short = await make_gateway(package_url_ttl_s=1)

    resp = await short.put(download_url(agent["id"], run_id), headers=bare(tenant))
    first = await resp.json()
    await asyncio.sleep(2.1)
    expired = await fetch(first["signed_url"])
    assert expired.status == 403
    v0_error(expired.json(), "signature_expired")

    resp = await short.put(download_url(agent["id"], run_id), headers=bare(tenant))
    second = await resp.json()

    assert second["id"] == first["id"]
    assert second["signed_url"] != first["signed_url"]
    assert (await fetch(second["signed_url"])).zip().namelist()[0] == "manifest.json"
    # However many ask at once, on whichever replica: one package.
    answers = await asyncio.gather(
        *(
            client.put(download_url(agent["id"], run_id), headers=bare(tenant))
            for client in [tenant.client, short] * 4
        )
    )
    assert {(await a.json())["id"] for a in answers} == {first["id"]}


async def test_a_job_in_flight_is_pending_and_its_url_a_409_until_it_ends(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    # A workflow that takes the run and reports back later: the test plays it.
    agent = await json_agent(tenant, runtime, "accepted?report=0", name="Slow one")
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger", headers=tenant.auth, json={}
    )
    run_id = (await resp.json())["runId"]
    assert await first_invoked_run(runtime) == run_id

    status, ticket = await put_download(tenant, agent["id"], run_id)

    assert (status, ticket["status"]) == (200, "pending")
    early = await fetch(ticket["signed_url"])
    assert early.status == 409
    error = v0_error(early.json(), "package_pending")
    assert error["details"]["job_id"] == str(run_id)
    assert error["details"]["status"] in {"queued", "running"}

    resp = await tenant.client.post(
        f"/api/runs/{run_id}/callback",
        headers=as_agent(agent),
        json={"type": "output", "complete": True, "output": {"pages": 3}},
    )
    assert resp.status == 202
    await wait_for_run(tenant, agent["id"], run_id)

    # The URL handed out while pending works now.
    archive = (await fetch(ticket["signed_url"])).zip()
    assert json.loads(archive.read("output.json")) == {"pages": 3}
    status, again = await put_download(tenant, agent["id"], run_id)
    assert (status, again["status"], again["id"]) == (200, "ready", ticket["id"])


async def test_a_failed_job_is_ready_and_its_manifest_says_why(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "workflow-error")
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-wait", headers=tenant.auth, json={}
    )
    run = await resp.json()
    assert run["status"] == "failed"

    status, ticket = await put_download(tenant, agent["id"], run["runId"])

    assert (status, ticket["status"]) == (200, "ready")
    archive = (await fetch(ticket["signed_url"])).zip()
    manifest = json.loads(archive.read("manifest.json"))
    assert (manifest["status"], manifest["error"]) == ("failed", run["error"])
    assert json.loads(archive.read("output.json")) is None


async def test_a_file_download_run_says_its_bytes_were_never_stored(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await tenant.create_agent(runtime=webhook(runtime, "report.csv"), name="Reports")
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-download",
        headers=tenant.auth,
        json={"input": {"topic": "Q3"}},
    )
    csv = await resp.read()
    run_id = int(resp.headers["X-Run-Id"])
    await wait_for_run(tenant, agent["id"], run_id)

    _status, ticket = await put_download(tenant, agent["id"], run_id)
    archive = (await fetch(ticket["signed_url"])).zip()

    assert archive.namelist() == ["manifest.json", "input.json", "output.json"]
    output = json.loads(archive.read("output.json"))
    assert output == {
        "kind": "file_download",
        "filename": "report.csv",
        "mimeType": "text/csv",
        "sizeBytes": len(csv),
    }
    manifest = json.loads(archive.read("manifest.json"))
    [file_line] = [line for line in manifest["assets"] if line["path"] is None]
    assert file_line["stored"] is False
    assert "never stores" in file_line["note"]
    assert (file_line["role"], file_line["name"], file_line["size"]) == (
        "output",
        "report.csv",
        len(csv),
    )


async def test_stored_output_files_go_under_outputs_with_safe_unique_names(
    tenant: Tenant,
    runtime: TestServer,
    consumer: StoreConsumer,
    db: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-wait", headers=tenant.auth, json={}
    )
    run_id = (await resp.json())["runId"]
    names = [
        "../../etc/passwd",
        "/abs/report.pdf",
        "report.pdf",
        "REPORT.PDF",
        "dir\\sub\\notes.txt",
        "con.txt",
        "..",
        "a:b*c?.txt",
        "résumé.txt",
        "tab\there.txt",
    ]
    contents = {name: f"{i}: {name}".encode() * 100 for i, name in enumerate(names)}
    for i, name in enumerate(names):
        await stored_output(tenant, db, run_id, i, name, contents[name])

    _status, ticket = await put_download(tenant, agent["id"], run_id)
    archive = (await fetch(ticket["signed_url"])).zip()

    assert archive.namelist()[:3] == ["manifest.json", "input.json", "output.json"]
    assert archive.namelist()[3:] == [
        "outputs/passwd",
        "outputs/report.pdf",
        "outputs/report (2).pdf",
        "outputs/REPORT (3).PDF",
        "outputs/notes.txt",
        "outputs/_con.txt",
        "outputs/file",
        "outputs/a_b_c_.txt",
        "outputs/résumé.txt",
        "outputs/tabhere.txt",
    ]
    # Each entry holds the file its manifest line names, byte for byte.
    manifest = json.loads(archive.read("manifest.json"))
    outputs = [a for a in manifest["assets"] if (a["path"] or "").startswith("outputs/")]
    assert [line["name"] for line in outputs] == names
    for line in outputs:
        assert archive.read(line["path"]) == contents[line["name"]]
    # Extracted as a user would: everything lands inside the target folder.
    target = tmp_path / "out"
    archive.extractall(target)
    extracted = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert extracted == sorted(archive.namelist())


async def test_a_file_gone_from_the_store_is_named_missing_and_the_rest_still_downloads(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, db: asyncpg.Pool
) -> None:
    agent, run_id = await job_with_two_files(tenant, runtime)
    [contract, _signature] = await run_files.list_run_files(db, run_id)
    await tenant.client.app[BLOB_STORE].delete(contract.blob_key)

    _status, ticket = await put_download(tenant, agent["id"], run_id)
    archive = (await fetch(ticket["signed_url"])).zip()

    assert "inputs/contract.pdf" not in archive.namelist()
    assert archive.read("inputs/signature.png") == PNG
    manifest = json.loads(archive.read("manifest.json"))
    [line] = [a for a in manifest["assets"] if a.get("name") == "contract.pdf"]
    assert (line["path"], line["stored"]) == (None, False)
    assert "no longer" in line["note"]


async def test_a_url_reference_input_is_listed_but_never_fetched(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await files_agent(tenant, runtime)
    run_id = await execute_job(
        tenant,
        agent,
        {
            "documents": [
                {"type": "url", "data": "https://files.example.com/a.pdf", "name": "a.pdf"},
                upload("b.txt", b"hello", "text/plain"),
            ]
        },
    )

    _status, ticket = await put_download(tenant, agent["id"], run_id)
    archive = (await fetch(ticket["signed_url"])).zip()

    assert [n for n in archive.namelist() if n.startswith("inputs/")] == ["inputs/b.txt"]
    manifest = json.loads(archive.read("manifest.json"))
    [reference] = [a for a in manifest["assets"] if a.get("name") == "a.pdf"]
    assert reference["url"] == "https://files.example.com/a.pdf"
    assert (reference["path"], reference["stored"], reference["index"]) == (None, False, 0)


async def test_head_answers_the_length_without_a_body(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent, run_id = await job_with_two_files(tenant, runtime)
    _status, ticket = await put_download(tenant, agent["id"], run_id)

    head = await fetch(ticket["signed_url"], method="HEAD")
    got = await fetch(ticket["signed_url"])

    assert (head.status, head.body) == (200, b"")
    assert head.headers["Content-Length"] == str(len(got.body))


async def test_a_caller_leaving_mid_download_leaves_the_gateway_able_to_serve_it_again(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await files_agent(tenant, runtime)
    big = make_bytes(15 * 1024 * 1024)
    run_id = await execute_job(
        tenant, agent, {"documents": [upload("big.bin", big, "application/octet-stream")]}
    )
    _status, ticket = await put_download(tenant, agent["id"], run_id)

    for _ in range(12):  # more than the archiver's threads
        async with aiohttp.ClientSession() as leaver, leaver.get(ticket["signed_url"]) as resp:
            assert resp.status == 200
            await resp.content.readexactly(64 * 1024)
        # Leaving the block closes the connection mid-body.

    archive = (await fetch(ticket["signed_url"])).zip()
    assert archive.read("inputs/big.bin") == big


async def test_bare_and_bearer_keys_are_both_accepted(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-wait", headers=tenant.auth, json={}
    )
    run_id = (await resp.json())["runId"]

    for headers in (bare(tenant), tenant.auth, {"Authorization": f"  {tenant.ingest_key} "}):
        status, body = await put_download(tenant, agent["id"], run_id, headers=headers)
        assert (status, body["status"]) == (200, "ready"), body


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "igk_not-a-key"},
        {"Authorization": "Bearer igk_not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "igk_" + "x" * 300},
    ],
    ids=["missing", "empty", "unknown", "unknown-bearer", "basic", "overlong"],
)
async def test_a_missing_or_invalid_key_is_a_401(tenant: Tenant, headers: dict[str, str]) -> None:
    status, body = await put_download(tenant, 1, 1, headers=headers)

    assert status == 401
    v0_error(body, "unauthorized")


async def test_malformed_ids_are_a_400_naming_the_id(tenant: Tenant) -> None:
    for bad in ("abc", "0", "-1", "1.5", "1e3", "99999999999999999999", "%E2%91%A0"):
        status, body = await put_download(tenant, bad, 1)
        assert status == 400, (bad, body)
        error = v0_error(body, "invalid_workflow_id")
        assert "workflow_id" in error["details"]

        status, body = await put_download(tenant, 1, bad)
        assert status == 400, (bad, body)
        v0_error(body, "invalid_job_id")


async def test_a_job_of_another_workflow_is_a_400(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    sibling = await json_agent(tenant, runtime, "json", name="Sibling")
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-wait", headers=tenant.auth, json={}
    )
    run_id = (await resp.json())["runId"]

    status, body = await put_download(tenant, sibling["id"], run_id)

    assert status == 400
    error = v0_error(body, "job_not_in_workflow")
    assert error["details"] == {"workflow_id": str(sibling["id"]), "job_id": str(run_id)}


async def test_another_organisations_workflow_or_job_is_a_403_revealing_nothing(
    tenant: Tenant,
    make_tenant: TenantFactory,
    runtime: TestServer,
    consumer: StoreConsumer,
) -> None:
    agent, run_id = await job_with_two_files(tenant, runtime)
    _status, ticket = await put_download(tenant, agent["id"], run_id)
    other = await make_tenant("Globex")
    own = await json_agent(other, runtime, "json")

    answers = {
        "their workflow and job": await put_download(other, agent["id"], run_id),
        "their job under my workflow": await put_download(other, own["id"], run_id),
        "no such workflow": await put_download(other, 10**12, run_id),
        "no such job": await put_download(other, own["id"], 10**12),
    }

    for what, (status, body) in answers.items():
        assert status == 403, (what, body)
        v0_error(body, "forbidden")
    # A workflow that exists elsewhere and one that exists nowhere answer alike.
    theirs, none = answers["their workflow and job"][1], answers["no such workflow"][1]
    assert theirs["error"]["message"].replace(str(agent["id"]), "N") == none["error"][
        "message"
    ].replace(str(10**12), "N")
    # Their key changed nothing: the owner's package is intact.
    assert (await fetch(ticket["signed_url"])).zip().read("inputs/contract.pdf") == PDF


async def test_a_tampered_signed_url_is_a_403(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    runs = []
    for _ in range(2):
        resp = await tenant.client.post(
            f"/api/agents/{agent['id']}/runs/trigger-and-wait", headers=tenant.auth, json={}
        )
        runs.append((await resp.json())["runId"])
    first = (await put_download(tenant, agent["id"], runs[0]))[1]
    second = (await put_download(tenant, agent["id"], runs[1]))[1]
    parts = urlsplit(first["signed_url"])
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    base = f"{parts.scheme}://{parts.netloc}"
    flipped = query["signature"][:-1] + ("0" if query["signature"][-1] != "0" else "1")
    other_path = urlsplit(second["signed_url"]).path

    tampered = {
        "signature changed": f"{base}{parts.path}?{urlencode(query | {'signature': flipped})}",
        "expiry extended": (
            f"{base}{parts.path}?{urlencode(query | {'expires': int(query['expires']) + 3600})}"
        ),
        "moved to another package": f"{base}{other_path}?{parts.query}",
        "no signature": f"{base}{parts.path}?expires={query['expires']}",
        "not signed at all": f"{base}{parts.path}",
        "not a number": f"{base}{parts.path}?{urlencode(query | {'expires': 'soon'})}",
    }

    for what, url in tampered.items():
        got = await fetch(url)
        assert got.status == 403, what
        v0_error(got.json(), "invalid_signature")
    assert (await fetch(first["signed_url"])).status == 200


async def test_every_v0_failure_answers_in_the_v0_shape(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-wait", headers=tenant.auth, json={}
    )
    run_id = (await resp.json())["runId"]
    url = download_url(agent["id"], run_id)

    resp = await tenant.client.get(url, headers=bare(tenant))
    assert (resp.status, resp.headers["Allow"]) == (405, "PUT")
    v0_error(await resp.json(), "method_not_allowed")

    resp = await tenant.client.post(url, headers=bare(tenant))
    assert resp.status == 405
    v0_error(await resp.json(), "method_not_allowed")

    for path in ("/v0/nothing", "/v0/workflows/1/jobs", "/v0/packages/x.tar"):
        resp = await tenant.client.get(path)
        assert resp.status == 404, path
        v0_error(await resp.json(), "not_found")

    resp = await tenant.client.put(
        url, headers=bare(tenant), data=io.BytesIO(b"x" * (2 * 1024 * 1024))
    )
    assert resp.status == 413
    v0_error(await resp.json(), "payload_too_large")

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(package_sql, "package_for_run", broken)
    resp = await tenant.client.put(url, headers={**bare(tenant), "X-Request-Id": "req-42"})
    assert resp.status == 500
    error = v0_error(await resp.json(), "internal_error")
    assert error == {
        "code": "internal_error",
        "message": "Internal server error",
        "details": {"requestId": "req-42"},
    }

    # Outside /v0 the agent API keeps its own shape.
    resp = await tenant.client.get("/api/nothing")
    assert await resp.json() == {"error": "Not Found"}


async def test_a_signed_url_whose_job_was_deleted_is_a_404(
    tenant: Tenant, runtime: TestServer, consumer: StoreConsumer, db: asyncpg.Pool
) -> None:
    agent = await json_agent(tenant, runtime, "json")
    resp = await tenant.client.post(
        f"/api/agents/{agent['id']}/runs/trigger-and-wait", headers=tenant.auth, json={}
    )
    run_id = (await resp.json())["runId"]
    _status, ticket = await put_download(tenant, agent["id"], run_id)

    await db.execute("DELETE FROM runs WHERE id = $1", run_id)

    got = await fetch(ticket["signed_url"])
    assert got.status == 404
    v0_error(got.json(), "not_found")
    assert re.search(r"/v0/packages/[0-9a-f-]{36}\.zip\?", ticket["signed_url"])
