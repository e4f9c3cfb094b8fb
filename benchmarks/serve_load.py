"""Load test of `avec serve`: concurrent clients mixing steering and lens requests against a server in this
process, every answer compared with the same request made alone, memory sampled as it runs.

    python benchmarks/serve_load.py [--model smollm2] [--clients 8] [--seconds 60] [--threads 2]

Each request is one of a fixed set (steered generation with different vectors, coefficients and seeds;
logit lens + DLA of different prompts), first answered alone, then fired by the clients in random order
for --seconds. Prints requests/s, latency percentiles, errors, answers that differ from the lone answer,
and the process's resident memory at the start, middle and end (flat = no leak per request). Exits 1 on
any error or mismatch. Not part of the test suite (it takes minutes).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
import urllib.error
import urllib.request


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def requests_mix() -> list[tuple[str, dict]]:
    out = []
    for i, (plus, minus) in enumerate([("Love", "Hate"), ("Calm", "Angry"), ("Wedding", "Weather")]):
        for c in (-6.0, 4.0, 8.0):
            out.append(("steering/generate", {"prompt": "I hate you because", "plus": plus, "minus": minus,
                                              "layer": 2 + 4 * i, "coeff": c, "max_new_tokens": 16}))
    out.append(("steering/generate", {"prompt": "My favourite food is", "plus": "Love", "minus": "Hate", "layer": 6,
                                      "coeff": 5.0, "max_new_tokens": 16, "sample": True, "seed": 3}))
    for prompt in ("The Eiffel Tower is in the city of", "When Mary and John went to the store, John gave a drink to",
                   "The capital of Germany is"):
        out.append(("lens/run", {"prompt": prompt}))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import avec
    from avec.app.server import BackgroundServer, create_app

    lm = avec.load(args.model)
    mix = requests_mix()
    with BackgroundServer(create_app(lm)) as server:
        alone = []
        for path, body in mix:
            status, answer = post(f"{server.url}/api/{path}", body)
            if status != 200:
                raise SystemExit(f"{path} {body} answered {status}: {answer}")
            alone.append(answer)
        rss = [("start", rss_mb())]
        latencies, errors, mismatches = [], [], []
        lock = threading.Lock()
        stop = time.time() + args.seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.time() < stop:
                k = rng.randrange(len(mix))
                t = time.perf_counter()
                status, answer = post(f"{server.url}/api/{mix[k][0]}", mix[k][1])
                took = time.perf_counter() - t
                with lock:
                    latencies.append(took)
                    if status != 200:
                        errors.append((k, status, answer))
                    elif answer != alone[k]:
                        mismatches.append(k)

        def sampler() -> None:
            time.sleep(args.seconds / 2)
            rss.append(("middle", rss_mb()))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        threads.append(threading.Thread(target=sampler))
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - t0
        rss.append(("end", rss_mb()))
    lat = sorted(latencies)
    print(f"{args.clients} clients, {wall:.0f} s, model {lm.name}, torch threads {args.threads}: {len(lat)} requests "
          f"({len(lat) / wall:.2f}/s); latency p50 {statistics.median(lat):.2f} s, p95 {lat[int(0.95 * (len(lat) - 1))]:.2f} s, "
          f"max {lat[-1]:.2f} s")
    print(f"errors: {len(errors)}; answers differing from the same request alone: {len(mismatches)}")
    print("resident memory (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in rss))
    return 1 if errors or mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
