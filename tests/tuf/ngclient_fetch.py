#!/usr/bin/env python3
"""python-tuf's own client, ngclient (an implementation independent of teledge's), against a
repository `teledge collect --fleet DIR` serves over mutual TLS: the fleet tests
(tests/it/fleet_owner.rs) check with it that what `teledge fleet` signs is valid TUF.

    ngclient_fetch.py URL CA CERT KEY ROOT STATE TARGET...

URL is the repository's base (https://localhost:PORT/v1/fleet/), CA the site CA, CERT and
KEY a node's client certificate and key, ROOT the root the node was shipped, STATE a
directory for ngclient's trusted metadata and downloads (kept between runs, so rollback
protection holds across them). Each TARGET is looked up, downloaded and verified. Prints
one JSON object: the trusted versions and, per target, its length, custom object and the
file it was downloaded to (null when the repository does not sign it). Any refusal is an
exception and exit 1.
"""

import json
import os
import sys

import urllib3
from tuf.api import exceptions
from tuf.ngclient import FetcherInterface, Updater


class MutualTlsFetcher(FetcherInterface):
    """ngclient's fetcher with a client certificate (its default one has none)."""

    def __init__(self, ca, cert, key):
        self.pool = urllib3.PoolManager(
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca,
            cert_file=cert,
            key_file=key,
            timeout=urllib3.Timeout(connect=10, read=10),
            retries=False,
        )

    def _fetch(self, url):
        try:
            response = self.pool.request("GET", url, preload_content=False)
        except urllib3.exceptions.HTTPError as e:
            raise exceptions.DownloadError(f"{url}: {e}") from e
        if response.status != 200:
            response.release_conn()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        return response.stream(65536)


def main():
    url, ca, cert, key, root, state, *targets = sys.argv[1:]
    metadata_dir = os.path.join(state, "metadata")
    download_dir = os.path.join(state, "downloads")
    os.makedirs(metadata_dir, exist_ok=True)
    os.makedirs(download_dir, exist_ok=True)
    trusted_root = os.path.join(metadata_dir, "root.json")
    if not os.path.exists(trusted_root):
        with open(root, "rb") as src, open(trusted_root, "wb") as dst:
            dst.write(src.read())
    with open(trusted_root, "rb") as f:
        bootstrap = f.read()
    updater = Updater(
        metadata_dir=metadata_dir,
        metadata_base_url=url + "metadata/",
        target_dir=download_dir,
        target_base_url=url + "targets/",
        fetcher=MutualTlsFetcher(ca, cert, key),
        bootstrap=bootstrap,
    )
    updater.refresh()
    trusted = updater._trusted_set  # noqa: SLF001 (the versions, for the test to compare)
    out = {
        "root_version": trusted.root.version,
        "timestamp_version": trusted.timestamp.version,
        "snapshot_version": trusted.snapshot.version,
        "targets_version": trusted.targets.version,
        "targets": {},
    }
    for path in targets:
        info = updater.get_targetinfo(path)
        if info is None:
            out["targets"][path] = None
            continue
        local = os.path.join(download_dir, path.replace("/", "_"))
        downloaded = updater.download_target(info, local)
        out["targets"][path] = {
            "length": info.length,
            "custom": info.unrecognized_fields.get("custom"),
            "file": downloaded,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
