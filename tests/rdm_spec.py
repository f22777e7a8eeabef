#!/usr/bin/env python3
"""Fetches the RDM upload service's public descriptions for the tests.

  rdm_spec.py DIR

Downloads (once; kept in DIR) the PyPI packages `uploader-client` 0.7.2 and
`edu-rdm-integration` 3.28.13 without installing them, and writes into DIR:

  rdm.json     the service's OpenAPI description, as the package ships it
  tables.json  per public RDM entity, its columns in order, its required
               and primary key columns, read from the package's
               `rdm_entities/entities.py` (parsed, not imported)

These are the vendor's texts, not vitrina's: the tests check vitrina's
requests and files against them. Standard library and pip only.
"""

import ast
import json
import os
import subprocess
import sys
import zipfile

PACKAGES = [("uploader-client", "0.7.2"), ("edu-rdm-integration", "3.28.13")]
# The entity classes and the table names their files are sent to (the
# lower-case entity key, as edu-rdm-integration's upload does).
ENTITIES = {
    "OrganisationsEntity": "organisations",
    "AddressEntity": "address",
    "AddressOrganisationEntity": "address_organisation",
    "TelecomEntity": "telecom",
}


def wheel(directory, name):
    prefix = name.replace("-", "_") + "-"
    for f in os.listdir(directory):
        if f.startswith(prefix) and f.endswith(".whl"):
            return os.path.join(directory, f)
    return None


def fetch(directory):
    for name, version in PACKAGES:
        if wheel(directory, name) is None:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--disable-pip-version-check", "--only-binary", ":all:",
                 "--dest", directory, f"{name}=={version}"],
                check=True,
            )


def fields_returned(fn, consts):
    """The cls.X names a method's return tuple lists, as field names."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Return) and node.value is not None:
            items = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            out = []
            for e in items:
                if isinstance(e, ast.Attribute) and e.attr in consts:
                    out.append(consts[e.attr])
            return out
    return []


def tables(source):
    out = {}
    for cls in ast.parse(source).body:
        if not isinstance(cls, ast.ClassDef) or cls.name not in ENTITIES:
            continue
        consts = {}
        methods = {}
        for node in cls.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                    and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)):
                consts[node.targets[0].id] = node.value.value
            if isinstance(node, ast.FunctionDef):
                methods[node.name] = node
        out[ENTITIES[cls.name]] = {
            "columns": fields_returned(methods["get_ordered_fields"], consts),
            "required": fields_returned(methods["get_required_fields"], consts),
            "primary_key": fields_returned(methods["get_primary_key_fields"], consts),
        }
    missing = set(ENTITIES.values()) - set(out)
    if missing:
        sys.exit(f"entities.py lacks {sorted(missing)}")
    return out


def main():
    directory = sys.argv[1]
    os.makedirs(directory, exist_ok=True)
    fetch(directory)
    with zipfile.ZipFile(wheel(directory, "uploader-client")) as z:
        spec = z.read("uploader_client/contrib/rdm/interfaces/rdm.json")
    with open(os.path.join(directory, "rdm.json"), "wb") as f:
        f.write(spec)
    with zipfile.ZipFile(wheel(directory, "edu-rdm-integration")) as z:
        source = z.read("edu_rdm_integration/rdm_entities/entities.py").decode()
    with open(os.path.join(directory, "tables.json"), "w") as f:
        json.dump(tables(source), f, indent=1)
    print(directory)


if __name__ == "__main__":
    main()
