"""Copy the widget screenshots of the last browser-test run (test-artifacts/browser/) into nbs/images/ for the
README, scaled down and palette-quantised so each stays small.  `make readme-images` runs it after the tests."""
import sys
from pathlib import Path
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHOTS = {"steering_lab.png": "steering_lab_3_episode.png",
         "patching_lab.png": "patching_lab_4_das.png",
         "clamping_lab.png": "clamping_lab_3_stopped.png"}

def main(width:int=760):
    src, dst = ROOT/"test-artifacts"/"browser", ROOT/"nbs"/"images"
    dst.mkdir(parents=True, exist_ok=True)
    for out, name in SHOTS.items():
        p = src/name
        if not p.exists(): print(f"skip {out}: {p} not found (run the browser tests first)"); continue
        im = Image.open(p).convert("RGB")
        if im.width > width: im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
        im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(dst/out, optimize=True)
        print(f"{dst/out}: {im.width}x{im.height}, {(dst/out).stat().st_size // 1024} KiB")

if __name__ == "__main__": main(*map(int, sys.argv[1:]))
