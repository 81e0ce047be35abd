"""Record the reference images that tests/test_golden.py compares every shipped model against.

    python scripts/record_golden.py                  # every shipped model
    python scripts/record_golden.py shapes-dfgan     # only these (the others' records are kept)

Each model draws PROMPT with SEED on one CPU thread; the image goes to tests/fixtures/golden/NAME.png (PNG is
lossless: the file holds the exact bytes drawn) and tests/fixtures/golden/golden.json records the prompt, the seed,
the sha256 of the raw RGB bytes on this machine (TRILEMMA_GOLDEN_EXACT=1 checks them) and, for a Shapes model, the
scorer's verdict. Re-record only for a deliberate change of a model's output, in the same commit, saying why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's trilemma, whatever is installed

import trilemma  # noqa: E402
from trilemma.registry import shapes_models, shipped_models  # noqa: E402
from trilemma.shapes.scorer import score_image  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "golden"
PROMPT = "a red circle to the left of a blue square"
SEED = 7


def _machine() -> str:
    """The CPU the bytes were drawn on (another CPU may round a pixel one grey level apart)."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return f"{platform.system()} {platform.machine()}" + (f", {names[0]}" if names else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="shipped models to record (default: all)")
    args = parser.parse_args(argv)
    shipped = shipped_models()
    unknown = [n for n in args.names if n not in shipped]
    if unknown:
        parser.error(f"not shipped models: {', '.join(unknown)}; shipped: {', '.join(shipped)}")
    FIXTURES.mkdir(parents=True, exist_ok=True)
    record_path = FIXTURES / "golden.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"models": {}}
    if args.names and (record.get("prompt"), record.get("seed")) != (PROMPT, SEED):
        parser.error("the prompt or seed changed: record every model (no names)")
    torch.set_num_threads(1)  # one thread: the order of float sums, and so the bytes, this machine always gives
    models = {name: record["models"][name] for name in record["models"] if name in shipped and name not in args.names}
    for name in args.names or shipped:
        image = trilemma.load(name).generate([PROMPT], seed=SEED)[0]
        pixels = np.asarray(image.convert("RGB"))
        Image.fromarray(pixels).save(FIXTURES / f"{name}.png")
        assert np.array_equal(np.asarray(Image.open(FIXTURES / f"{name}.png").convert("RGB")), pixels)
        verdict = score_image(pixels, PROMPT) if name in shapes_models() else None
        models[name] = {"sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
                        "verdict": None if verdict is None else {"passed": verdict.passed, "reason": verdict.reason}}
        print(f"{name}: {models[name]['sha256'][:16]} {models[name]['verdict']}")
    record = {"prompt": PROMPT, "seed": SEED, "threads": 1, "torch": torch.__version__,
              "machine": _machine(),
              "models": dict(sorted(models.items()))}
    record_path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
