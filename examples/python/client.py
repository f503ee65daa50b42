#!/usr/bin/env python3
"""A greyrouter client in Python, built from the contract in proto/ alone.

It generates the gRPC stubs from proto/greyrouter/v1/*.proto into a temporary directory with
grpc_tools.protoc (no generated code is kept), then, against a running server:

  1. lists the tenants;
  2. routes a tenant's request to a service;
  3. watches the tenant's assignments (the snapshot first);
  4. pins the tenant to another version with compare-and-set (expected_version);
  5. reads the watch update the pin caused;
  6. repeats the same compare-and-set, now stale, and handles its ABORTED answer;
  7. routes again and reports the outcome of that request.

    python3 examples/python/client.py --server 127.0.0.1:50051 \\
        --tenant globex --service user-service --version v2.0

Needs Python 3.11 and the packages of requirements.txt beside this file. Exits 1 with an
"error: ..." line on stderr when anything fails.
"""

from __future__ import annotations

import argparse
import collections
import importlib.resources
import sys
import tempfile
import time
from pathlib import Path

try:
    import grpc
    from grpc_tools import protoc
except ImportError as missing:
    sys.exit(
        f"error: {missing.name} is missing: "
        "python3 -m pip install -r examples/python/requirements.txt"
    )

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
DEADLINE_SECONDS = 10.0
# Who made a change and why, for the audit trail and the watch update's cause.
AUDIT = (("x-greyrouter-actor", "python-example"), ("x-greyrouter-reason", "contract demo"))

# The fields of google.rpc.Status and google.rpc.ErrorInfo (googleapis), to read the details the
# server attaches to errors: an ABORTED compare-and-set carries the current version in an
# ErrorInfo. A package of our own keeps clear of googleapis-common-protos, if it is installed.
RICH_ERRORS_PROTO = """\
syntax = "proto3";
package greyrouter_example;
import "google/protobuf/any.proto";
message Status {
  int32 code = 1;
  string message = 2;
  repeated google.protobuf.Any details = 3;
}
message ErrorInfo {
  string reason = 1;
  string domain = 2;
  map<string, string> metadata = 3;
}
"""


def generate_stubs(out: Path) -> None:
    """Compiles the contract (and the rich error messages) into Python modules in `out`."""
    errors_dir = out / "errors"
    errors_dir.mkdir()
    (errors_dir / "rich_errors.proto").write_text(RICH_ERRORS_PROTO)
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    contract = sorted(
        str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("greyrouter/v1/*.proto")
    )
    if not contract:
        sys.exit(f"error: no .proto files under {PROTO_DIR}")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{errors_dir}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *contract,
        "rich_errors.proto",
    ]
    if protoc.main(args) != 0:
        sys.exit(f"error: grpc_tools.protoc could not compile {PROTO_DIR}")
    sys.path.insert(0, str(out))


def current_version(error: grpc.RpcError) -> str | None:
    """Returns the `current_version` of the ErrorInfo detail of an error, if it has one."""
    import rich_errors_pb2

    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in rich_errors_pb2.Status.FromString(value).details:
            if detail.type_url.endswith("/google.rpc.ErrorInfo"):
                info = rich_errors_pb2.ErrorInfo.FromString(detail.value)
                return info.metadata.get("current_version")
    return None


def describe(a) -> str:
    """Returns "tenant service version (source)" for an Assignment."""
    return f"{a.tenant_id} {a.service} {a.version} ({a.source})"


def read_revision(stream) -> tuple[int, bool, list, str]:
    """Reads the messages of one revision (large ones come split, partial=true but the last)."""
    upserts = []
    while True:
        update = next(stream, None)
        if update is None:
            sys.exit("error: the watch stream ended")
        upserts.extend(update.upserts)
        if not update.partial:
            return update.revision, update.snapshot, upserts, update.cause


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call (routers with auth on)."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        return _Details(
            details.method,
            details.timeout,
            list(details.metadata or ()) + [self.header],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """A plaintext channel, or TLS for https:// (with --ca-file and a client certificate)."""
    if args.server.startswith("https://"):
        read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.ca_file),
            private_key=read(args.key_file),
            certificate_chain=read(args.cert_file),
        )
        channel = grpc.secure_channel(args.server.removeprefix("https://"), credentials)
    else:
        channel = grpc.insecure_channel(args.server.removeprefix("http://"))
    if args.token:
        channel = grpc.intercept_channel(channel, BearerToken(args.token))
    return channel


def run(args: argparse.Namespace) -> None:
    from greyrouter.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc

    channel = open_channel(args)
    try:
        grpc.channel_ready_future(channel).result(timeout=DEADLINE_SECONDS)
    except grpc.FutureTimeoutError:
        sys.exit(f"error: cannot connect to {args.server}")
    admin = admin_pb2_grpc.AdminStub(channel)
    router = router_pb2_grpc.RouterStub(channel)
    tenant, service = args.tenant, args.service

    # 1. The tenants, page by page.
    tenants, token = [], ""
    while True:
        page = admin.ListTenants(
            admin_pb2.ListTenantsRequest(page_token=token), timeout=DEADLINE_SECONDS
        )
        tenants.extend(t.id for t in page.tenants)
        token = page.next_page_token
        if not token:
            break
    print(f"tenants ({len(tenants)}): {', '.join(tenants)}")

    # 2. Where does this tenant's request go, and why?
    def route() -> router_pb2.RouteResponse:
        routed = router.Route(
            router_pb2.RouteRequest(tenant_id=tenant, service=service), timeout=DEADLINE_SECONDS
        )
        print(
            f"route {tenant} {service} -> {routed.version} ({routed.source}) "
            f"{routed.instance_id} {routed.address}"
        )
        return routed

    before = route().version
    target = args.version
    if target is None:
        services = admin.ListServices(admin_pb2.ListServicesRequest(), timeout=DEADLINE_SECONDS)
        known = next((s.versions for s in services.services if s.name == service), [])
        target = next((v for v in known if v != before), None)
        if target is None:
            sys.exit(f"error: {service} has no version other than {before}: pass --version")
    if target == before:
        sys.exit(f"error: {tenant} is already on {service} {target}: pass another --version")

    # 3. Follow the tenant's assignments: a snapshot first, then every change.
    watch = router.WatchAssignments(
        router_pb2.WatchAssignmentsRequest(tenant_ids=[tenant]), timeout=4 * DEADLINE_SECONDS
    )
    try:
        revision, snapshot, upserts, _ = read_revision(watch)
        if not snapshot:
            sys.exit("error: the watch did not start with a snapshot")
        print(f"watch snapshot revision {revision}: {', '.join(map(describe, upserts))}")

        # 4. Pin with compare-and-set: applies only if the tenant is still on `before`.
        cas = admin_pb2.SetTenantVersionRequest(
            tenant_id=tenant, service=service, version=target, expected_version=before
        )
        pinned = admin.SetTenantVersion(cas, timeout=DEADLINE_SECONDS, metadata=AUDIT)
        print(
            f"pin {tenant} {service} {pinned.previous_version} -> {target} "
            f"(expected {before}) revision {pinned.revision}"
        )

        # 5. The watch update that pin caused.
        while revision < pinned.revision:
            revision, _, upserts, cause = read_revision(watch)
        changed = [a for a in upserts if a.service == service]
        if not changed:
            sys.exit(f"error: watch update revision {revision} does not change {service}")
        print(f"watch update revision {revision}: {', '.join(map(describe, changed))} ({cause})")
    finally:
        watch.cancel()

    # 6. The same compare-and-set again: its expectation is stale now, so the server refuses it.
    try:
        admin.SetTenantVersion(cas, timeout=DEADLINE_SECONDS, metadata=AUDIT)
        sys.exit(f"error: a stale compare-and-set (expected {before}) was applied")
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.ABORTED:
            raise
        current = current_version(error)
        verdict = "our pin holds" if current == target else "re-read and decide again"
        print(
            f"cas {tenant} {service} expected {before} -> ABORTED: "
            f"current version {current} ({verdict})"
        )

    # 7. Route again and tell the router how the request went.
    routed = route()
    started = time.monotonic()
    # ... a real client would send its request to routed.address here ...
    report = router.ReportOutcomes(
        router_pb2.ReportOutcomesRequest(
            outcomes=[
                router_pb2.Outcome(
                    instance_id=routed.instance_id,
                    tenant_id=tenant,
                    service=service,
                    version=routed.version,
                    success=True,
                    latency_ms=int((time.monotonic() - started) * 1000),
                    status_code=200,
                )
            ]
        ),
        timeout=DEADLINE_SECONDS,
    )
    print(f"outcome reported: accepted {report.accepted}, rejected {report.rejected}")
    channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--server",
        default="127.0.0.1:50051",
        help="host:port of a greyrouter, or https://host:port for TLS (default: %(default)s)",
    )
    parser.add_argument("--tenant", default="globex", help="tenant id (default: globex)")
    parser.add_argument(
        "--service", default="user-service", help="service name (default: user-service)"
    )
    parser.add_argument(
        "--version", help="version to pin the tenant to (default: another version of the service)"
    )
    parser.add_argument("--token", help="bearer token (a JWT or an API key) when auth is on")
    parser.add_argument("--ca-file", help="CA bundle (PEM) of the server's certificate (https://)")
    parser.add_argument("--cert-file", help="client certificate (PEM), for mTLS")
    parser.add_argument("--key-file", help="the client certificate's key (PEM)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="greyrouter-stubs-") as out:
        generate_stubs(Path(out))
        try:
            run(args)
        except grpc.RpcError as error:
            sys.exit(f"error: {error.code().name}: {error.details()}")


if __name__ == "__main__":
    main()
