"""Vendor tiktoken's o200k_base and cl100k_base encodings into ``src/llm_meter/_encodings/``.

Why: tiktoken downloads its encoding files at run time from openaipublic.blob.core.windows.net.
llm_meter must estimate tokens fully offline, so it ships the files inside the package instead.

The PyPI wheel ``bpe-openai==0.1.4`` carries byte-identical copies (gzipped) of OpenAI's
``.tiktoken`` files. This script downloads that wheel with pip (from the package index, never
from openaipublic), extracts the two ``.gz`` files, checks that the gunzipped SHA-256 equals the
hash tiktoken itself expects for each encoding, and writes the ``.gz`` files unchanged.

Re-runnable: existing files are overwritten only after every check passed.

    python scripts/vendor_encodings.py            # needs pip and network access to the index
    python scripts/vendor_encodings.py --wheel path/to/bpe_openai-0.1.4-*.whl   # offline
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "bpe-openai==0.1.4"
ENCODINGS = ("o200k_base", "cl100k_base")
OUT_DIR = Path(__file__).resolve().parent.parent / "src" / "llm_meter" / "_encodings"

# Fallback only, used when tiktoken is not importable. Copied from the ``expected_hash=`` arguments
# in tiktoken_ext/openai_public.py (identical in tiktoken 0.7 through 0.14); they are SHA-256 of the
# *gunzipped* .tiktoken files. Whenever tiktoken is importable its own values are used and must match.
FALLBACK_HASHES = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}


def tiktoken_expected_hashes() -> dict[str, str] | None:
    """Read ``expected_hash`` for each encoding from tiktoken_ext/openai_public.py, without running it.

    The source is parsed (``ast``), not executed, so nothing can trigger tiktoken's download.
    Returns None when tiktoken is not installed.
    """
    spec = importlib.util.find_spec("tiktoken_ext.openai_public")
    if spec is None or spec.origin is None:
        return None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name in ENCODINGS):
            continue
        for call in ast.walk(node):
            if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "load_tiktoken_bpe"):
                continue
            for kw in call.keywords:
                if kw.arg == "expected_hash" and isinstance(kw.value, ast.Constant):
                    found[node.name] = str(kw.value.value)
    missing = set(ENCODINGS) - set(found)
    if missing:
        raise SystemExit(f"could not find expected_hash for {sorted(missing)} in {spec.origin}")
    return found


def expected_hashes() -> dict[str, str]:
    """The hashes to verify against: tiktoken's own, cross-checked with the fallback constants."""
    from_tiktoken = tiktoken_expected_hashes()
    if from_tiktoken is None:
        print("tiktoken not importable: using the hard-coded hashes from this script", file=sys.stderr)
        return dict(FALLBACK_HASHES)
    if from_tiktoken != FALLBACK_HASHES:
        raise SystemExit(
            f"tiktoken's expected hashes {from_tiktoken} differ from FALLBACK_HASHES {FALLBACK_HASHES}; "
            "update FALLBACK_HASHES and the _SPECS in src/llm_meter/_estimate.py deliberately"
        )
    return from_tiktoken


def download_wheel(dest: Path) -> Path:
    """``pip download`` the bpe-openai wheel (no dependencies) into ``dest`` and return its path."""
    cmd = [
        sys.executable, "-m", "pip", "download", WHEEL_REQUIREMENT,
        "--no-deps", "--only-binary=:all:", "-d", str(dest),
    ]  # fmt: skip
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("bpe_openai-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected exactly one bpe_openai wheel in {dest}, found {wheels}")
    return wheels[0]


def extract_verified(wheel: Path, hashes: dict[str, str]) -> dict[str, bytes]:
    """Return ``{encoding: gz bytes}`` from the wheel after checking each gunzipped SHA-256."""
    out: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as zf:
        for name in ENCODINGS:
            gz = zf.read(f"bpe_openai/data/{name}.tiktoken.gz")
            raw = gzip.decompress(gz)
            digest = hashlib.sha256(raw).hexdigest()
            if digest != hashes[name]:
                raise SystemExit(f"{name}: gunzipped SHA-256 {digest} != expected {hashes[name]}")
            print(f"{name}: {len(gz):,} bytes gzipped, {len(raw):,} raw, sha256 {digest} OK", file=sys.stderr)
            out[name] = gz
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wheel", type=Path, help="use this already-downloaded bpe_openai wheel")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"output directory (default {OUT_DIR})")
    args = parser.parse_args(argv)

    hashes = expected_hashes()
    with tempfile.TemporaryDirectory(prefix="vendor-encodings-") as tmp:
        wheel = args.wheel if args.wheel is not None else download_wheel(Path(tmp))
        files = extract_verified(wheel, hashes)

    args.out.mkdir(parents=True, exist_ok=True)
    for name, gz in files.items():
        target = args.out / f"{name}.tiktoken.gz"
        tmp_target = target.with_suffix(".gz.tmp")
        tmp_target.write_bytes(gz)
        tmp_target.replace(target)
        print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
