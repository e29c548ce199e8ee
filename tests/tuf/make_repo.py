#!/usr/bin/env python3
"""Builds TUF repositories with python-tuf (PyPI `tuf`), an implementation independent of
teledge's, for the fleet tests (tests/it/fleet.rs).

    make_repo.py SPEC.json OUT

SPEC says which keys each role has, their thresholds, and a list of states. Every state is
written as a whole repository, OUT/<state>/metadata and OUT/<state>/targets, as a
repository would look at that moment (every N.root.json so far included); OUT/root.json is
the first root, the one a node ships with. Keys live only in this process: one run makes
one repository history.

    {"consistent_snapshot": true,
     "keys": {"root": 1, "targets": 2, "snapshot": 1, "timestamp": 1},
     "thresholds": {"targets": 2},
     "states": [
       {"name": "s1",
        "targets": [{"path": "packages/x.deb", "file": "/abs/x.deb", "custom": {...}}],
        "expired": ["timestamp"],          # expires yesterday
        "targets_signers": 1,              # sign targets with this many keys (default all)
        "rotate": "timestamp",             # a new root version with a new key for the role
        "without_old_root_keys": true,     # with "rotate": "root", not signed by the old key
        "bump": ["targets", "snapshot", "timestamp"]}]}   # default: all three

Versions start at 1 and each state bumps the roles named in "bump".
"""

import copy
import hashlib
import json
import os
import shutil
import sys
from datetime import datetime, timedelta, timezone

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    MetaFile,
    Metadata,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer


def main():
    spec = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    os.makedirs(out, exist_ok=True)
    now = datetime.now(timezone.utc).replace(microsecond=0)

    def expires(days):
        return now + timedelta(days=days)

    consistent = spec.get("consistent_snapshot", True)
    signers = {
        role: [CryptoSigner.generate_ed25519() for _ in range(n)]
        for role, n in spec["keys"].items()
    }
    root = Metadata(Root(expires=expires(365), consistent_snapshot=consistent))
    for role, keys in signers.items():
        for key in keys:
            root.signed.add_key(key.public_key, role)
        root.signed.roles[role].threshold = spec.get("thresholds", {}).get(role, 1)
    for key in signers["root"]:
        root.sign(key, append=True)
    roots = [copy.deepcopy(root)]
    root.to_file(os.path.join(out, "root.json"), JSONSerializer())

    versions = {"targets": 0, "snapshot": 0, "timestamp": 0}
    for state in spec["states"]:
        base = os.path.join(out, state["name"])
        meta_dir = os.path.join(base, "metadata")
        targets_dir = os.path.join(base, "targets")
        os.makedirs(meta_dir)
        os.makedirs(targets_dir)
        role = state.get("rotate")
        if role:
            old_root_signers = signers["root"]
            for keyid in list(root.signed.roles[role].keyids):
                root.signed.revoke_key(keyid, role)
            signers[role] = [CryptoSigner.generate_ed25519()]
            root.signed.add_key(signers[role][0].public_key, role)
            root.signed.version += 1
            root.signatures.clear()
            # A new root is signed by the old root keys and the new ones, unless the state
            # says otherwise (an attack: a root only the new keys signed).
            if not state.get("without_old_root_keys"):
                for key in old_root_signers:
                    root.sign(key, append=True)
            for key in signers["root"]:
                root.sign(key, append=True)
            roots.append(copy.deepcopy(root))
        for r in roots:
            r.to_file(
                os.path.join(meta_dir, f"{r.signed.version}.root.json"),
                JSONSerializer(),
            )
        shutil.copy(
            os.path.join(meta_dir, f"{roots[-1].signed.version}.root.json"),
            os.path.join(meta_dir, "root.json"),
        )
        for name in state.get("bump", ["targets", "snapshot", "timestamp"]):
            versions[name] += 1
        expired = set(state.get("expired", []))

        def exp(name, days):
            return expires(-1) if name in expired else expires(days)

        targets = Metadata(Targets(version=versions["targets"], expires=exp("targets", 90)))
        for t in state.get("targets", []):
            tf = TargetFile.from_file(t["path"], t["file"], ["sha256", "sha512"])
            if "custom" in t:
                tf.unrecognized_fields["custom"] = t["custom"]
            targets.signed.targets[t["path"]] = tf
            digest = hashlib.sha256(open(t["file"], "rb").read()).hexdigest()
            directory, name = os.path.split(t["path"])
            stored = f"{digest}.{name}" if consistent else name
            os.makedirs(os.path.join(targets_dir, directory), exist_ok=True)
            shutil.copy(t["file"], os.path.join(targets_dir, directory, stored))
        for key in signers["targets"][: state.get("targets_signers", len(signers["targets"]))]:
            targets.sign(key, append=True)
        snapshot = Metadata(Snapshot(version=versions["snapshot"], expires=exp("snapshot", 30)))
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        for key in signers["snapshot"]:
            snapshot.sign(key, append=True)
        timestamp = Metadata(Timestamp(version=versions["timestamp"], expires=exp("timestamp", 1)))
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        for key in signers["timestamp"]:
            timestamp.sign(key, append=True)
        prefix = lambda v: f"{v}." if consistent else ""
        targets.to_file(
            os.path.join(meta_dir, f"{prefix(targets.signed.version)}targets.json"),
            JSONSerializer(),
        )
        snapshot.to_file(
            os.path.join(meta_dir, f"{prefix(snapshot.signed.version)}snapshot.json"),
            JSONSerializer(),
        )
        timestamp.to_file(os.path.join(meta_dir, "timestamp.json"), JSONSerializer())


if __name__ == "__main__":
    main()
