"""Load test of `trilemma serve`: many concurrent clients for a bounded time, on loopback only.

    python bench/serve_load.py                       # 50 clients, 60 s, shapes-ldm-f8 and shapes-dfgan
    python bench/serve_load.py --clients 50 --seconds 60 --models shapes-ldm-f8 --out reports/serve-load

For each model the server runs twice in the same run, as a subprocess (`trilemma serve`): one request at a time
(--max-batch 1), then with dynamic batching (--max-batch 32); the ratio of their images per second is the gain of
batching. Each client submits a text-to-image request (one image; a prompt and seed from a fixed set), honours a
429's Retry-After, long-polls the job, fetches its PNG and compares it with the image that the Python API draws for
the same prompt and seed, computed before the server starts: a job that never finishes is lost, an image that is
not its request's is mixed up. The server's resident memory is sampled every second.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

PROMPTS = ["a red circle", "two green squares", "a blue triangle above a yellow circle", "three purple circles",
           "a small orange square to the left of a large cyan triangle", "a yellow square below a red triangle",
           "one big blue square", "a green circle and a red square", "four small red triangles", "a cyan circle"]
SEEDS = [0, 1, 2, 3, 4]


def references(model_name: str) -> dict[tuple[str, int], np.ndarray]:
    import trilemma

    model = trilemma.load(model_name)
    pairs = [(p, s) for p in PROMPTS for s in SEEDS]
    out = {}
    for k in range(0, len(pairs), 10):
        chunk = pairs[k:k + 10]
        for pair, image in zip(chunk, model.generate([p for p, _ in chunk], seed=[s for _, s in chunk])):
            out[pair] = np.asarray(image, dtype=np.float64)
    return out


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None


def run(model: str, max_batch: int, args, refs) -> dict:
    outdir = Path(args.workdir) / f"{model}-batch{max_batch}"
    outdir.mkdir(parents=True, exist_ok=True)
    port = args.port
    log = open(outdir / "server.log", "w")  # a file, not a pipe that nobody reads while the clients run
    server = subprocess.Popen([sys.executable, "-m", "trilemma", "serve", "--models", model, "--port", str(port),
                               "--queue-size", str(args.queue_size), "--max-batch", str(max_batch), "--outdir", str(outdir)],
                              stderr=log, stdout=log, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/api/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        server.kill()
        raise SystemExit(f"the server did not start: {(outdir / 'server.log').read_text()[-2000:]}")
    # One warm-up job loads the model, so that loading is not in the measured minute.
    with httpx.Client(base_url=base, timeout=120) as c:
        job = c.post("/api/generate", json={"prompt": "a red circle", "seed": 0}).json()
        c.get(f"/api/jobs/{job['id']}", params={"wait": 60})

    lock = threading.Lock()
    stats = {"accepted": 0, "done": 0, "failed": 0, "lost": 0, "mixed_up": 0, "status_429": 0, "status_5xx": 0,
             "other_4xx": 0, "latencies": [], "completions": []}
    memory = []
    stop_at = time.perf_counter() + args.seconds
    start = time.perf_counter()

    def client(i: int) -> None:
        n = i
        with httpx.Client(base_url=base, timeout=120) as c:
            while time.perf_counter() < stop_at:
                prompt, seed = PROMPTS[n % len(PROMPTS)], SEEDS[(n // len(PROMPTS)) % len(SEEDS)]
                n += args.clients
                t0 = time.perf_counter()
                r = c.post("/api/generate", json={"prompt": prompt, "seed": seed})
                if r.status_code == 429:
                    with lock:
                        stats["status_429"] += 1
                    time.sleep(min(float(r.headers.get("retry-after", 1)), max(0.0, stop_at - time.perf_counter())))
                    continue
                if r.status_code >= 500:
                    with lock:
                        stats["status_5xx"] += 1
                    continue
                if r.status_code != 202:
                    with lock:
                        stats["other_4xx"] += 1
                    continue
                job = r.json()
                with lock:
                    stats["accepted"] += 1
                deadline = time.perf_counter() + args.seconds + 120
                while job["status"] not in ("done", "failed", "cancelled") and time.perf_counter() < deadline:
                    reply = c.get(f"/api/jobs/{job['id']}", params={"wait": 30})
                    if reply.status_code >= 500:
                        with lock:
                            stats["status_5xx"] += 1
                    job = reply.json() if reply.status_code == 200 else job
                t1 = time.perf_counter()
                if job["status"] != "done":
                    with lock:
                        stats["failed" if job["status"] == "failed" else "lost"] += 1
                    continue
                got = np.asarray(Image.open(io.BytesIO(c.get(job["images"][0]).content)).convert("RGB"), dtype=np.float64)
                diff = np.abs(got - refs[(prompt, seed)])
                with lock:
                    stats["done"] += 1
                    stats["latencies"].append(t1 - t0)
                    stats["completions"].append(t1)
                    if job["params"]["prompt"] != prompt or job["params"]["seed"] != seed or diff.max() > 2 or diff.mean() > 0.05:
                        stats["mixed_up"] += 1

    def sample_memory() -> None:
        while time.perf_counter() < stop_at + 5:
            memory.append(rss_mb(server.pid))
            time.sleep(1)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    sampler = threading.Thread(target=sample_memory)
    for t in threads + [sampler]:
        t.start()
    for t in threads + [sampler]:
        t.join()
    with httpx.Client(base_url=base, timeout=30) as c:
        health = c.get("/api/health").json()  # images per forward pass, over the server's last 1000 passes
    server.terminate()
    server.wait(timeout=30)
    log.close()
    in_window = [t for t in stats["completions"] if t <= stop_at]
    lat = sorted(stats.pop("latencies"))
    stats.pop("completions")
    memory = [m for m in memory if m is not None]
    return {**stats, "model": model, "max_batch": max_batch, "clients": args.clients, "seconds": args.seconds,
            "images_per_s": round(len(in_window) / (stop_at - start), 3),
            "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
            "latency_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3) if lat else None,
            "mean_batch_images": health["images_per_pass"],
            "rss_mb_start": round(memory[0]) if memory else None, "rss_mb_max": round(max(memory)) if memory else None,
            "rss_mb_end": round(memory[-1]) if memory else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["shapes-ldm-f8", "shapes-dfgan"])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--queue-size", type=int, default=32)
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--workdir", default="/tmp/trilemma-serve-load")
    parser.add_argument("--out", default="reports/serve-load")
    args = parser.parse_args()
    if not 1 <= args.clients <= 200 or not 1 <= args.seconds <= 600:
        raise SystemExit("bounded by design: 1-200 clients, 1-600 seconds")
    rows = []
    for model in args.models:
        refs = references(model)
        for max_batch in (1, 32):
            row = run(model, max_batch, args, refs)
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# `trilemma serve` under load\n", f"`python bench/serve_load.py --clients {args.clients} --seconds "
             f"{args.seconds:g} --models {' '.join(args.models)}`: {args.clients} concurrent clients for {args.seconds:g} s "
             f"per row, loopback, queue of {args.queue_size}, one image per request, on this machine's CPU "
             "(2 cores, shared by the server and the clients).\n",
             "| model | batching | images/s | gain | p50 latency (s) | p95 latency (s) | mean images per pass | done | "
             "429s | 5xx | lost | mixed up | server RSS MB (start / max / end) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        solo = next(r for r in rows if r["model"] == row["model"] and r["max_batch"] == 1)
        gain = f"{row['images_per_s'] / solo['images_per_s']:.2f}x" if solo["images_per_s"] else "-"
        lines.append(f"| {row['model']} | {'one request at a time' if row['max_batch'] == 1 else 'dynamic, up to ' + str(row['max_batch'])} "
                     f"| {row['images_per_s']} | {gain} | {row['latency_p50_s']} | {row['latency_p95_s']} | "
                     f"{row['mean_batch_images']} | {row['done']} | {row['status_429']} | {row['status_5xx']} | "
                     f"{row['lost']} | {row['mixed_up']} | {row['rss_mb_start']} / {row['rss_mb_max']} / {row['rss_mb_end']} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
